"""Helpers shared by the tests (conftest.py sets TRITON_INTERPRET before this is imported)."""

import pytest
import torch

from fastmarl.ops.triton_support import HAS_TRITON, interpreting

requires_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and HAS_TRITON),
    reason="needs a CUDA device with Triton; its CPU twin (test_*_triton.py for kernels) runs instead",
)
requires_interpreter = pytest.mark.skipif(
    not (HAS_TRITON and interpreting()),
    reason="needs Triton with TRITON_INTERPRET=1 (set by conftest when there is no CUDA device)",
)


def assert_close(actual, expected, *, atol, rtol, name="tensor"):
    """``torch.testing.assert_close`` that also prints where the worst mismatches are."""
    actual = actual.detach().to(torch.float64).cpu()
    expected = expected.detach().to(torch.float64).cpu()
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    bad = ~torch.isclose(actual, expected, atol=atol, rtol=rtol, equal_nan=True)
    if bad.any():
        idx = bad.nonzero()[:5].tolist()
        detail = ", ".join(
            f"{tuple(i)}: {actual[tuple(i)].item():.6g} vs {expected[tuple(i)].item():.6g}" for i in idx
        )
        err = (actual - expected).abs().nan_to_num(float("inf")).max().item()
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{bad.numel()} mismatches (max abs err {err:.3g}, "
            f"atol={atol}, rtol={rtol}); first at {detail}"
        )
