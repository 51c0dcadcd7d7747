"""The QMIX hypernetwork mixer: ``naive.py`` (TorchRL's mixer, the oracle), ``params.py`` (the
named parameter tuple), ``cpu.py`` (torch kernels), ``weight_grads.py`` (the backward's GEMMs,
both devices), ``triton.py`` (launchers of ``fastmarl/kernels/qmix.py``), ``op.py``
(registration, autograd and :func:`~fastmarl.ops.qmix.op.select_path`, the one path policy)."""

from fastmarl.ops.qmix.op import mix, select_path
from fastmarl.ops.qmix.params import MODULE_PARAM_NAMES, QMixParams

__all__ = ["MODULE_PARAM_NAMES", "QMixParams", "mix", "select_path"]
