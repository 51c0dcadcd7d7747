"""Input factories for the GAE tests, shared by the op, estimator and Triton-interpreter tests."""

from __future__ import annotations

import torch

DONE_PATTERNS = ("none", "all", "random", "truncated")


def make_flags(shape, pattern: str, generator=None):
    """``(done, terminated)`` bool tensors of ``shape`` following ``pattern``.

    ``truncated``: done ≠ terminated (half the done steps are truncations, which keep the
    bootstrap but cut the λ-trace).
    """
    if pattern == "none":
        done = torch.zeros(shape, dtype=torch.bool)
        return done, done.clone()
    if pattern == "all":
        done = torch.ones(shape, dtype=torch.bool)
        return done, done.clone()
    done = torch.rand(shape, generator=generator) < 0.2
    if pattern == "random":
        return done, done.clone()
    if pattern == "truncated":
        return done, done & (torch.rand(shape, generator=generator) < 0.5)
    raise ValueError(pattern)


def make_gae_inputs(shape, *, pattern="random", dtype=torch.float32, device="cpu"):
    """``(value, next_value, reward, done, terminated)`` of one shape."""
    value, next_value, reward = (torch.randn(shape, dtype=dtype) for _ in range(3))
    done, terminated = make_flags(shape, pattern)
    return tuple(x.to(device) for x in (value, next_value, reward, done, terminated))
