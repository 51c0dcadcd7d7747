"""The multi-agent GAE scan: ``naive.py`` (TorchRL's loop, the oracle), ``cpu.py`` (torch
kernels), ``triton.py`` (launchers of ``fastmarl/kernels/gae.py``), ``op.py`` (registration,
autograd and :func:`~fastmarl.ops.gae.op.select_path`, the one path policy)."""

from fastmarl.ops.gae.op import gae, select_path

__all__ = ["gae", "select_path"]
