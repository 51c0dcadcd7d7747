"""``torch.library`` ops of fastmarl; importing this package registers ``torch.ops.fastmarl.*``."""

from fastmarl.ops import gae, ppo
from fastmarl.ops import qmix
from fastmarl.ops._triton import HAS_TRITON

__all__ = ["HAS_TRITON", "gae", "ppo", "qmix"]
