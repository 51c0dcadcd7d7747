"""Drop-ins for :mod:`torchrl.modules.models`."""

from fastmarl.modules.models import multiagent
from fastmarl.modules.models.multiagent import QMixer, VDNMixer

__all__ = ["QMixer", "VDNMixer", "multiagent"]
