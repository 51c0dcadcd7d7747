"""The dtype rules every op shares, defined once.

- Results come back in the promoted dtype of the floating inputs (:func:`result_dtype`).
- Arithmetic accumulates in float32, or float64 when any input is float64
  (:func:`accumulate_dtype`): half-precision inputs are read, computed in float32 and rounded once.
"""

from __future__ import annotations

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
FLAG_DTYPES = (torch.bool, torch.uint8)


def result_dtype(*tensors: Tensor) -> torch.dtype:
    """The promoted dtype of ``tensors`` (None entries skipped)."""
    dtype = None
    for x in tensors:
        if x is not None:
            dtype = x.dtype if dtype is None else torch.promote_types(dtype, x.dtype)
    return dtype


def accumulate_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float64 if any of ``dtypes`` is float64, else float32."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def single_precision(*tensors: Tensor) -> bool:
    """All of ``tensors`` float32, or all float64: the inputs TorchRL's own op sequences take."""
    dtype = tensors[0].dtype
    return dtype in (torch.float32, torch.float64) and all(x.dtype == dtype for x in tensors)


def cast(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x.to(dtype)`` that skips the dispatch when nothing changes (3 us a call on the CPU
    machine, where a MARL-sized op is a few dozen such calls)."""
    return x if x.dtype == dtype else x.to(dtype)
