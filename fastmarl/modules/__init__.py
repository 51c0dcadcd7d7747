"""Drop-ins for :mod:`torchrl.modules`."""

from fastmarl.modules import models
from fastmarl.modules.models import MultiAgentMLP, QMixer, VDNMixer

__all__ = ["MultiAgentMLP", "QMixer", "VDNMixer", "models"]
