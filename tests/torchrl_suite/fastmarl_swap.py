"""A pytest plugin that runs TorchRL's own tests with fastmarl's drop-ins in TorchRL's place.

Loaded with ``-p fastmarl_swap`` (see ``run.py`` beside it): before pytest imports any TorchRL test
module, every public TorchRL name that fastmarl replaces is rebound to fastmarl's class or function
in each TorchRL module that exports it, so that ``from torchrl.objectives import ClipPPOLoss``
inside TorchRL's tests gets :class:`fastmarl.objectives.ClipPPOLoss`: what a user does by changing
an import. TorchRL's value-estimator registry is pointed at fastmarl's ``GAE``/``MultiAgentGAE``
too (through TorchRL's public ``register_value_estimator``), so that TorchRL's own losses that
build an estimator from ``ValueEstimators.GAE``/``MAGAE`` (``A2CLoss``, ``PPOLoss``,
``KLPENPPOLoss``, ``ReinforceLoss``...) run fastmarl's scan as well, and TorchRL's tests that
check the class they get see the swapped name.

``FASTMARL_SWAP=0`` loads the plugin without swapping: the same run against stock TorchRL, to tell
fastmarl's differences from tests that fail with TorchRL itself.
"""

from __future__ import annotations

import importlib
import os

import fastmarl.functional
import fastmarl.modules
import fastmarl.objectives

# (TorchRL module, name, fastmarl replacement).
_SWAPS = []
for _module in ("torchrl.objectives", "torchrl.objectives.ppo"):
    _SWAPS.append((_module, "ClipPPOLoss", fastmarl.objectives.ClipPPOLoss))
for _module in ("torchrl.objectives", "torchrl.objectives.multiagent", "torchrl.objectives.multiagent.mappo"):
    _SWAPS += [(_module, "MAPPOLoss", fastmarl.objectives.MAPPOLoss),
               (_module, "IPPOLoss", fastmarl.objectives.IPPOLoss)]
for _module in ("torchrl.objectives", "torchrl.objectives.multiagent", "torchrl.objectives.multiagent.qmixer"):
    _SWAPS.append((_module, "QMixerLoss", fastmarl.objectives.QMixerLoss))
for _module in ("torchrl.objectives.value", "torchrl.objectives.value.advantages"):
    _SWAPS += [(_module, "GAE", fastmarl.objectives.GAE),
               (_module, "MultiAgentGAE", fastmarl.objectives.MultiAgentGAE)]
_SWAPS.append(("torchrl.objectives.value.functional", "generalized_advantage_estimate",
               fastmarl.functional.generalized_advantage_estimate))
for _module in ("torchrl.modules", "torchrl.modules.models", "torchrl.modules.models.multiagent"):
    _SWAPS += [(_module, "QMixer", fastmarl.modules.QMixer),
               (_module, "VDNMixer", fastmarl.modules.VDNMixer),
               (_module, "MultiAgentMLP", fastmarl.modules.MultiAgentMLP)]

SWAPPED: list[str] = []


def _swap() -> None:
    from torchrl.objectives.utils import ValueEstimators, get_value_estimator_entry, register_value_estimator

    for module_name, name, replacement in _SWAPS:
        module = importlib.import_module(module_name)
        if not hasattr(module, name):
            raise RuntimeError(f"fastmarl_swap: {module_name} has no {name}; the TorchRL version differs")
        setattr(module, name, replacement)
        SWAPPED.append(f"{module_name}.{name}")
    for value_type, cls in ((ValueEstimators.GAE, fastmarl.objectives.GAE),
                            (ValueEstimators.MAGAE, fastmarl.objectives.MultiAgentGAE)):
        defaults = dict(get_value_estimator_entry(value_type).default_kwargs)
        register_value_estimator(value_type, default_kwargs=defaults)(cls)
        SWAPPED.append(f"value-estimator registry: {value_type.name}")


def _unskip_test_ppo() -> None:
    # TorchRL's TestPPO is skipped unless `transformers` is importable, though none of its tests
    # uses it (a guard left from the LLM tests); pretend it is, so that the class runs.
    try:
        common = importlib.import_module("_objectives_common")
    except ImportError:
        return
    common._has_transformers = True


def pytest_configure(config):
    if os.environ.get("FASTMARL_SWAP", "1") != "0":
        _swap()
    _unskip_test_ppo()


def pytest_report_header(config):
    if not SWAPPED:
        return "fastmarl_swap: OFF (stock TorchRL)"
    return f"fastmarl_swap: {len(SWAPPED)} TorchRL names now fastmarl's"
