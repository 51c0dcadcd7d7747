"""The two TorchRL-0.14 shims that BenchMARL 1.5.2 needs, and nothing else of BenchMARL patched.

BenchMARL 1.5.2 (the newest release) declares ``torchrl>=0.10,<0.12``; fastmarl is built on
TorchRL 0.14.1. Run on 0.14.1, BenchMARL hits exactly two incompatibilities, each fixed here in a
few lines (both idempotent). Everything else of BenchMARL runs as released.
"""

from __future__ import annotations

import importlib

import torchrl.collectors
from torchrl.modules import QValueModule

__all__ = ["alias_sync_data_collector", "lenient_qvalue_module", "BENCHMARL_QVALUE_ALGORITHMS"]

# BenchMARL's algorithm modules that build a QValueModule in _get_policy_for_loss.
BENCHMARL_QVALUE_ALGORITHMS = ("qmix", "vdn", "iql")


def alias_sync_data_collector() -> None:
    """``from torchrl.collectors import SyncDataCollector`` (benchmarl/experiment/experiment.py,
    BenchMARL 1.5.2) fails on TorchRL 0.14.1, which exports the same single-process collector
    only as ``Collector`` (same constructor arguments, iteration, ``update_policy_weights_``,
    ``state_dict`` and ``shutdown``). Adds the old name as an alias; must run before
    ``import benchmarl``."""
    if not hasattr(torchrl.collectors, "SyncDataCollector"):
        torchrl.collectors.SyncDataCollector = torchrl.collectors.Collector


class _QValueModule(QValueModule):
    """TorchRL 0.14.1's ``QValueModule`` with ``strict_shape=False`` unless given.

    TorchRL 0.14.1 checks the greedy action's shape against ``spec`` by default
    (``strict_shape=True``), reading the spec's shape as per-sample. BenchMARL 1.5.2 passes its
    per-group spec, whose shape already holds the agent dim (``[n_agents]``), so QMIX, VDN and IQL
    crash while building the collector: ``Action shape [2, 4] does not match expected shape
    [2, 4, 4]``. ``False`` is the check's off switch: the action is what TorchRL < 0.14 computed.
    """

    def __init__(self, *args, strict_shape=False, **kwargs):
        super().__init__(*args, strict_shape=strict_shape, **kwargs)


def lenient_qvalue_module() -> None:
    """Points the ``QValueModule`` name of BenchMARL's QMIX, VDN and IQL modules at
    :class:`_QValueModule` (see there). Run after ``import benchmarl``."""
    for name in BENCHMARL_QVALUE_ALGORITHMS:
        module = importlib.import_module(f"benchmarl.algorithms.{name}")
        if module.QValueModule is QValueModule:
            module.QValueModule = _QValueModule
