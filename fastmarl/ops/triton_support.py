"""Whether Triton kernels can run here, decided once at import; fastmarl imports without Triton."""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.library import triton_op

HAS_TRITON = importlib.util.find_spec("triton") is not None

# Set by cpu_tensors_on_interpreter(): CPU tensors take the Triton path too.
_CPU_ON_INTERPRETER = False


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def on_triton_device(tensor: torch.Tensor) -> bool:
    """Whether a registered op sends ``tensor`` to its Triton kernels: CUDA tensors, when Triton
    is installed. CPU tensors take the torch kernels, also under ``TRITON_INTERPRET=1`` (the
    interpreter is for checking kernels), except inside :func:`cpu_tensors_on_interpreter`."""
    return HAS_TRITON and (tensor.device.type == "cuda"
                           or (_CPU_ON_INTERPRETER and tensor.device.type == "cpu"))


@contextmanager
def cpu_tensors_on_interpreter() -> Iterator[None]:
    """Inside the block, the ops send CPU tensors where they send CUDA tensors: path policy,
    allocation, Triton launchers and fallbacks, with the kernels run by Triton's interpreter.
    How ``fastmarl check --interpret`` runs the CUDA code path end to end without a GPU.
    Needs ``TRITON_INTERPRET=1`` set before Triton was imported."""
    global _CPU_ON_INTERPRETER
    if not (HAS_TRITON and interpreting()):
        raise RuntimeError("cpu_tensors_on_interpreter needs Triton and TRITON_INTERPRET=1 set "
                           "before Triton is imported")
    previous, _CPU_ON_INTERPRETER = _CPU_ON_INTERPRETER, True
    try:
        yield
    finally:
        _CPU_ON_INTERPRETER = previous


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
