"""fastmarl: Triton kernels and drop-in TorchRL classes for multi-agent RL training.

Change an import (``torchrl`` → ``fastmarl``) and keep the constructor, keys and numbers; the hot
paths run as one ``torch.library`` op each: a Triton kernel on CUDA, an exact torch kernel
elsewhere. Importing fastmarl needs neither a GPU nor Triton.

``import fastmarl`` itself imports nothing heavy (so that ``fastmarl --help`` answers in a
fraction of a second instead of the ~1.3 s torch takes to import): the ops are registered
(``torch.ops.fastmarl.*``) by the first import of ``fastmarl.ops``, ``fastmarl.functional``,
``fastmarl.objectives`` or ``fastmarl.modules``, or by reading ``fastmarl.HAS_TRITON``.
"""

import importlib

__version__ = "0.1.0"

__all__ = ["HAS_TRITON", "UpdateStep", "__version__", "make_optimizer"]

_SUBMODULES = {"distributed", "functional", "modules", "objectives", "ops", "training"}


def __getattr__(name: str):
    # PEP 562: heavy parts load on first use (keep new public names here, not as eager imports).
    if name == "HAS_TRITON":
        return importlib.import_module("fastmarl.ops").HAS_TRITON
    if name in _SUBMODULES:
        return importlib.import_module(f"fastmarl.{name}")
    if name in ("UpdateStep", "make_optimizer"):
        return getattr(importlib.import_module("fastmarl.update"), name)
    raise AttributeError(f"module 'fastmarl' has no attribute {name!r}")
