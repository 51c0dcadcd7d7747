"""fastmarl: Triton kernels and drop-in TorchRL classes for multi-agent RL training.

Change an import (``torchrl`` → ``fastmarl``) and keep the constructor, keys and numbers; the hot
paths (multi-agent GAE so far) run as one ``torch.library`` op each: a Triton kernel on CUDA, an
exact torch kernel elsewhere. Importing fastmarl needs neither a GPU nor Triton.
"""

from fastmarl import ops  # noqa: F401  (registers torch.ops.fastmarl.*)
from fastmarl.ops import HAS_TRITON

__version__ = "0.1.0"

__all__ = ["HAS_TRITON", "__version__"]
