"""Drop-ins for :mod:`torchrl.modules`."""

from fastmarl.modules import models
from fastmarl.modules.models import QMixer, VDNMixer

__all__ = ["QMixer", "VDNMixer", "models"]
