"""Whether Triton kernels can run here, decided once at import; fastmarl imports without Triton."""

from __future__ import annotations

import importlib.util
import logging
import os

import torch
from torch.library import triton_op

HAS_TRITON = importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def on_triton_device(tensor: torch.Tensor) -> bool:
    """Whether a registered op sends ``tensor`` to its Triton kernels: CUDA tensors, when Triton
    is installed. CPU tensors always take the torch kernels, also under ``TRITON_INTERPRET=1``:
    the interpreter is for checking kernels (tests call the launchers directly)."""
    return HAS_TRITON and tensor.device.type == "cuda"


def register_op(name: str):
    """``torch.library.triton_op(name, mutates_args=())``. Without Triton, torch logs a warning
    per registration ("Triton not available, find_triton_kernels = []") that a CPU-only user
    has no use for: it is silenced for the registration, and the op runs its torch branch."""

    def decorate(fn):
        if HAS_TRITON:
            return triton_op(name, mutates_args=())(fn)
        logger = logging.getLogger("torch._library.triton")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            return triton_op(name, mutates_args=())(fn)
        finally:
            logger.setLevel(level)

    return decorate
