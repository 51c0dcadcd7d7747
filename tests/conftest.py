"""Shared test setup.

Without CUDA, Triton kernels are checked in Triton's CPU interpreter: ``TRITON_INTERPRET=1``
must be set before Triton is imported, so it is set here, before anything imports fastmarl.
With CUDA the kernels run compiled and the interpreter tests skip (CI has no GPU, so they run
there).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
