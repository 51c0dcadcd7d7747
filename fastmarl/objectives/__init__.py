"""Drop-ins for :mod:`torchrl.objectives` (value estimators so far: see ``fastmarl.objectives.value``)."""

from fastmarl.objectives import value
from fastmarl.objectives.value import GAE, MultiAgentGAE

__all__ = ["GAE", "MultiAgentGAE", "value"]
