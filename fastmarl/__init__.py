"""fastmarl: Triton kernels and drop-in TorchRL classes for multi-agent RL training.

Change an import (``torchrl`` → ``fastmarl``) and keep the constructor, keys and numbers; the hot
paths (multi-agent GAE so far) run as one ``torch.library`` op each: a Triton kernel on CUDA, an
exact torch kernel elsewhere. Importing fastmarl needs neither a GPU nor Triton.
"""

from fastmarl import ops  # noqa: F401  (registers torch.ops.fastmarl.*)
from fastmarl.ops import HAS_TRITON

__version__ = "0.1.0"

__all__ = ["HAS_TRITON", "UpdateStep", "__version__", "make_optimizer"]


def __getattr__(name):
    # fastmarl.UpdateStep imports tensordict and torch.optim machinery on first use only.
    if name in ("UpdateStep", "make_optimizer"):
        from fastmarl import update

        return getattr(update, name)
    raise AttributeError(f"module 'fastmarl' has no attribute {name!r}")
