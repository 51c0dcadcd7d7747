"""Whether Triton kernels can run here, decided once at import; fastmarl imports without Triton."""

from __future__ import annotations

import importlib.util
import os

import torch

HAS_TRITON = importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def on_triton_device(tensor: torch.Tensor) -> bool:
    """Whether a registered op sends ``tensor`` to its Triton kernels: CUDA tensors, when Triton
    is installed. CPU tensors always take the torch kernels, also under ``TRITON_INTERPRET=1``:
    the interpreter is for checking kernels (tests call the launchers directly)."""
    return HAS_TRITON and tensor.device.type == "cuda"
