"""Drop-in for :mod:`torchrl.objectives.value.functional`.

``generalized_advantage_estimate`` is fastmarl's (one op call, see
:func:`fastmarl.functional.generalized_advantage_estimate`); the other TorchRL functionals are
re-exported unchanged so that ``torchrl`` -> ``fastmarl`` in an import keeps working.
"""

from torchrl.objectives.value.functional import *  # noqa: F401,F403  (re-exported unchanged)
from torchrl.objectives.value.functional import __all__ as _torchrl_all

from fastmarl.functional import generalized_advantage_estimate  # noqa: F401

__all__ = sorted(set(_torchrl_all) | {"generalized_advantage_estimate"})
