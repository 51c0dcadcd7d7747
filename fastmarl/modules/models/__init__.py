"""Drop-ins for :mod:`torchrl.modules.models`."""

from fastmarl.modules.models import multiagent
from fastmarl.modules.models.multiagent import MultiAgentMLP, QMixer, VDNMixer

__all__ = ["MultiAgentMLP", "QMixer", "VDNMixer", "multiagent"]
