"""Shared test setup.

Without CUDA, Triton kernels are checked in Triton's CPU interpreter: ``TRITON_INTERPRET=1``
must be set before Triton is imported, so it is set here, before anything imports fastmarl.
With CUDA the kernels run compiled and the interpreter tests skip (CI has no GPU, so they run
there).
"""

import hashlib
import os
import tempfile
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _inductor_cache_dir() -> str:
    # torch's compile caches key a graph on how it calls fastmarl's ops, not on what the ops'
    # host functions trace into: a cache written by another version of fastmarl (another
    # checkout, an older commit) hands back code that calls ops which no longer exist
    # ("'fastmarl' object has no attribute 'qmix_torch'"). One cache per version of the ops' source.
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted([*root.glob("fastmarl/**/*.py"), *root.glob("kernels/*.py")]):
        digest.update(path.read_bytes())
    return os.path.join(tempfile.gettempdir(), f"torchinductor-fastmarl-{digest.hexdigest()[:16]}")


os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", _inductor_cache_dir())

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
