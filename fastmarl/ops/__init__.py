"""``torch.library`` ops of fastmarl; importing this package registers ``torch.ops.fastmarl.*``."""

from fastmarl.ops import gae
from fastmarl.ops._triton import HAS_TRITON

__all__ = ["HAS_TRITON", "gae"]
