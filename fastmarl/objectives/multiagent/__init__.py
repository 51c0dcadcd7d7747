"""Drop-ins for :mod:`torchrl.objectives.multiagent`."""

from fastmarl.objectives.multiagent.mappo import IPPOLoss, MAPPOLoss
from fastmarl.objectives.multiagent.qmixer import QMixerLoss

__all__ = ["IPPOLoss", "MAPPOLoss", "QMixerLoss"]
