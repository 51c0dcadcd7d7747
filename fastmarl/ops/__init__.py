"""fastmarl's ``torch.library`` ops, one folder each; importing this package registers
``torch.ops.fastmarl.*``.

======  ==================  ======================  =====================================
op      folder              kernels                 path policy
======  ==================  ======================  =====================================
GAE     fastmarl/ops/gae    fastmarl/kernels/gae    :func:`fastmarl.ops.gae.select_path`
PPO     fastmarl/ops/ppo    fastmarl/kernels/ppo    :func:`fastmarl.ops.ppo.select_path`
QMIX    fastmarl/ops/qmix   fastmarl/kernels/qmix   :func:`fastmarl.ops.qmix.select_path`
======  ==================  ======================  =====================================

Each folder holds ``naive.py`` (TorchRL's semantics: the tests' oracle, the benchmarks'
baseline), ``cpu.py`` (torch kernels), ``triton.py`` (Triton launchers, imported only when
Triton is installed) and ``op.py`` (registration, autograd, ``select_path``).
:func:`force_path` overrides every policy inside a ``with`` block (see :mod:`.paths`).
"""

from fastmarl.ops import gae, ppo, qmix
from fastmarl.ops.paths import Path, force_path
from fastmarl.ops.triton_support import HAS_TRITON

__all__ = ["HAS_TRITON", "Path", "force_path", "gae", "ppo", "qmix"]
