"""Drop-ins for :mod:`torchrl.objectives`.

fastmarl's own: ``ClipPPOLoss``, ``MAPPOLoss``, ``IPPOLoss`` and the value estimators ``GAE`` and
``MultiAgentGAE``. ``ValueEstimators`` is TorchRL's enum, re-exported for the import swap.
"""

from torchrl.objectives import ValueEstimators

from fastmarl.objectives import value
from fastmarl.objectives.multiagent import IPPOLoss, MAPPOLoss, QMixerLoss
from fastmarl.objectives.ppo import ClipPPOLoss
from fastmarl.objectives.value import GAE, MultiAgentGAE

__all__ = ["ClipPPOLoss", "GAE", "IPPOLoss", "MAPPOLoss", "MultiAgentGAE", "QMixerLoss", "ValueEstimators", "value"]
