"""Drop-in for :mod:`torchrl.objectives.value.functional`: the GAE functional on fastmarl's op.

Only ``generalized_advantage_estimate`` is fastmarl's; the other TorchRL functionals are
re-exported unchanged so that ``torchrl`` → ``fastmarl`` in an import keeps working.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor
from torchrl.objectives.value.functional import *  # noqa: F401,F403  (re-exported unchanged)
from torchrl.objectives.value.functional import __all__ as _torchrl_all

import fastmarl.ops  # noqa: F401  (registers torch.ops.fastmarl)
from fastmarl import reference

__all__ = list(_torchrl_all)

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_FLAG_DTYPES = (torch.bool, torch.uint8)


def _layout(shape: torch.Size, time_dim: int) -> str:
    return f"[*B, T, *F] = {tuple(shape)} with T at dim {time_dim}"


def _broadcasts_to(shape, target) -> bool:
    # torch.broadcast_shapes costs ~90 us a call through its reference implementation.
    return len(shape) <= len(target) and all(
        s in (1, t) for s, t in zip(reversed(shape), reversed(target))
    )


def _check_discount(name, x, shape, device, layout, check_values) -> None:
    if isinstance(x, Tensor):
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a float or a floating-point tensor, got dtype {x.dtype}")
        if x.device != device:
            raise ValueError(f"{name} is on {x.device} but state_value is on {device}: all inputs must share one device")
        if not _broadcasts_to(x.shape, shape):
            raise ValueError(
                f"{name} has shape {tuple(x.shape)}, which does not broadcast to state_value's "
                f"{layout}; a tensor {name} must be a scalar or broadcastable to that shape"
            )
        # A range check reads the data: free on CPU, a device sync elsewhere, impossible while
        # tracing. CUDA tensors are checked where they are made (fastmarl's GAE constructor).
        if (check_values and x.device.type == "cpu" and not torch.compiler.is_compiling()
                and x.numel() > 0):
            lo, hi = torch.aminmax(x.detach())
            if not (0.0 <= lo and hi <= 1.0):
                raise ValueError(f"{name} must lie in [0, 1], got values in [{float(lo)}, {float(hi)}]")
        return
    if isinstance(x, bool) or not isinstance(x, Real):
        raise TypeError(f"{name} must be a float in [0, 1] or a tensor, got {type(x).__name__}")
    if not 0.0 <= x <= 1.0:  # also False for NaN
        raise ValueError(f"{name} must lie in [0, 1], got {x}")


def _check_inputs(gamma, lmbda, state_value, next_state_value, reward, done, terminated, time_dim,
                  check_discount_values):
    named = {
        "state_value": state_value, "next_state_value": next_state_value, "reward": reward,
        "done": done, "terminated": terminated,
    }
    for name, x in named.items():
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if state_value.ndim == 0:
        raise ValueError("state_value is 0-dim; expected [*B, T, *F] with a time dim")
    if not isinstance(time_dim, int) or not -state_value.ndim <= time_dim < state_value.ndim:
        raise ValueError(
            f"time_dim={time_dim} is out of range for state_value of shape "
            f"{tuple(state_value.shape)}"
        )
    shape = state_value.shape
    time_dim %= state_value.ndim
    layout = _layout(shape, time_dim)
    for name in ("state_value", "next_state_value", "reward"):
        if named[name].dtype not in _FLOAT_DTYPES:
            raise TypeError(
                f"{name} must be float16, bfloat16, float32 or float64, got {named[name].dtype}"
            )
    for name in ("done", "terminated"):
        if named[name].dtype not in _FLAG_DTYPES:
            raise TypeError(f"{name} must be a bool or uint8 tensor, got {named[name].dtype}")
    for name, x in named.items():
        if x.device != state_value.device:
            raise ValueError(
                f"{name} is on {x.device} but state_value is on {state_value.device}: all "
                "inputs must share one device"
            )
        if x.ndim != state_value.ndim or any(s not in (1, n) for s, n in zip(x.shape, shape)):
            raise ValueError(
                f"{name} has shape {tuple(x.shape)}, expected state_value's {layout} (a dim "
                "of size 1 broadcasts; team-shared signals without an agent dim go through "
                "MultiAgentGAE, which adds it)"
            )
    if state_value.numel() == 0:
        raise ValueError(
            f"state_value of shape {tuple(shape)} is empty: GAE needs at least one time step "
            f"and one batch element in {layout}"
        )
    _check_discount("gamma", gamma, shape, state_value.device, layout, check_discount_values)
    _check_discount("lmbda", lmbda, shape, state_value.device, layout, check_discount_values)
    return time_dim


def generalized_advantage_estimate(
    gamma: float | Tensor,
    lmbda: float | Tensor,
    state_value: Tensor,
    next_state_value: Tensor,
    reward: Tensor,
    done: Tensor,
    terminated: Tensor | None = None,
    *,
    time_dim: int = -2,
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimate, with TorchRL's contract, as one op call.

    Same arguments and results as :func:`torchrl.objectives.value.functional.generalized_advantage_estimate`
    (its loop path, bit for bit on CPU in float32/float64): ``done`` cuts the λ-trace,
    ``terminated`` (``done`` when omitted) cuts the bootstrap, and a row may hold several
    trajectories.

    Args:
        gamma, lmbda: floats in [0, 1], or tensors broadcastable to ``state_value`` (per-step
            discounts, read in place: no ``[B, T, T]`` matrix, unlike TorchRL's vectorised path).
        state_value, next_state_value, reward: floating tensors of shape ``[*B, T, *F]``;
            ``next_state_value`` and ``reward`` may have size 1 where ``state_value`` has more
            (a team reward ``[*B, T, 1, 1]`` against values ``[*B, T, A, 1]`` is read with
            stride 0, never copied per agent).
        done, terminated: bool or uint8 flags, same rule.
        time_dim: the time dim of ``state_value``.

    Returns:
        ``(advantage, value_target)`` of ``state_value``'s shape, in the promoted dtype of the
        value, next value and reward; accumulated in float32 (float64 for float64 inputs).

    Gradients flow to ``state_value``, ``next_state_value`` and ``reward`` through the op's
    backward scan. If ``gamma`` or ``lmbda`` is a tensor that requires grad, the computation
    falls back to :func:`fastmarl.reference.gae_reference` so that they get gradients too.
    NaN and inf propagate exactly as in TorchRL (``0 * NaN`` is NaN): inputs are not scanned
    for them, which would cost a device sync.
    """
    return _gae(gamma, lmbda, state_value, next_state_value, reward, done, terminated,
                time_dim=time_dim, check_discount_values=True)


def _gae(gamma, lmbda, state_value, next_state_value, reward, done, terminated, *, time_dim,
         check_discount_values):
    """The functional's body; fastmarl's estimators skip the per-call range check of their γ/λ
    buffers (checked at construction; γ**steps stays in [0, 1])."""
    if terminated is None:
        terminated = done
    time_dim = _check_inputs(
        gamma, lmbda, state_value, next_state_value, reward, done, terminated, time_dim,
        check_discount_values,
    )
    if any(isinstance(x, Tensor) and x.requires_grad for x in (gamma, lmbda)):
        return reference.gae_reference(
            gamma, lmbda, state_value, next_state_value, reward, done, terminated,
            time_dim=time_dim,
        )

    shape = state_value.shape
    num_rows = math.prod(shape[:time_dim])
    num_features = math.prod(shape[time_dim + 1:])

    def as_rtf(x: Tensor) -> Tensor:
        # A view whenever strides allow (expanded dims stay stride 0), a copy otherwise.
        return x.expand(shape).reshape(num_rows, shape[time_dim], num_features)

    def split(discount) -> tuple[float, Tensor | None]:
        if isinstance(discount, Tensor):
            return 1.0, as_rtf(discount)
        return float(discount), None

    gamma_scalar, gamma_tensor = split(gamma)
    lmbda_scalar, lmbda_tensor = split(lmbda)
    advantage, value_target = torch.ops.fastmarl.gae(
        as_rtf(state_value), as_rtf(next_state_value), as_rtf(reward), as_rtf(done),
        as_rtf(terminated), gamma_scalar, lmbda_scalar, gamma_tensor, lmbda_tensor,
    )
    return advantage.view(shape), value_target.view(shape)


__all__ = sorted(set(__all__))
