"""``torch.ops.fastmarl.gae``: the GAE scan as a ``torch.library`` op with autograd.

Ops (all take ``[R, T, F]`` tensors; see :mod:`fastmarl.kernels.gae` for the layout)::

    fastmarl::gae(value, next_value, reward, done, terminated, gamma, lmbda,
                  gamma_tensor, lmbda_tensor) -> (advantage, value_target)
    fastmarl::gae_backward(grad_advantage, grad_value_target, done, terminated, gamma, lmbda,
                           gamma_tensor, lmbda_tensor, value_dtype, next_value_dtype,
                           reward_dtype) -> (grad_value, grad_next_value, grad_reward)

γ is ``gamma * gamma_tensor`` when ``gamma_tensor`` is given, else ``gamma`` (λ likewise).
Both ops are ``triton_op``s whose host function sends CUDA tensors to the Triton launchers
below and everything else to the torch kernels of :mod:`fastmarl.reference`, which are
registered as opaque custom ops (``fastmarl::gae_torch``, ``fastmarl::gae_backward_torch``):
``torch.compile`` traces into a ``triton_op``, and tracing a loop over T would unroll it.

Running the Triton kernels on CPU tensors: set ``TRITON_INTERPRET=1`` before Triton is imported
and call :func:`gae_fwd_triton` / :func:`gae_bwd_triton` directly (``tests/test_gae_triton.py``
does this in CI); the op itself always sends CPU tensors to the torch kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.library import custom_op, triton_op, wrap_triton

from fastmarl import reference
from fastmarl.ops._triton import HAS_TRITON, use_triton

if HAS_TRITON:
    from fastmarl.kernels.gae import (
        NUM_WARPS,
        gae_block_sizes,
        gae_bwd_kernel,
        gae_fwd_kernel,
        gae_grid,
    )

__all__ = ["gae_fwd_triton", "gae_bwd_triton"]


def _out_dtype(value: Tensor, next_value: Tensor, reward: Tensor) -> torch.dtype:
    return torch.promote_types(torch.promote_types(value.dtype, next_value.dtype), reward.dtype)


def _check_rtf(shape, **tensors: Tensor | None) -> None:
    # The public functional validates user input with full messages; this guards direct op calls.
    for name, x in tensors.items():
        if x is not None and tuple(x.shape) != tuple(shape):
            raise ValueError(
                f"fastmarl::gae: {name} has shape {tuple(x.shape)}, expected [R, T, F] = "
                f"{tuple(shape)}; use fastmarl.objectives.value.functional."
                "generalized_advantage_estimate to broadcast and reshape"
            )


def _scalar_strides(tensor: Tensor | None) -> tuple[int, int, int]:
    return (0, 0, 0) if tensor is None else tuple(tensor.stride())


# --------------------------------------------------------------------------- Triton launchers


def gae_fwd_triton(
    value: Tensor, next_value: Tensor, reward: Tensor, done: Tensor, terminated: Tensor,
    gamma: float, lmbda: float, gamma_tensor: Tensor | None, lmbda_tensor: Tensor | None,
    advantage: Tensor, value_target: Tensor, block_t: int | None = None,
) -> None:
    """Launch :func:`~fastmarl.kernels.gae.gae_fwd_kernel`; outputs are contiguous ``[R, T, F]``.

    ``block_t`` overrides the tile length (tests use a short one to cross tiles at small T).
    """
    R, T, F = value.shape
    default_block_t, block_f = gae_block_sizes(F)
    block_t = block_t or default_block_t
    wrap_triton(gae_fwd_kernel)[gae_grid(R, F, block_f)](
        value, next_value, reward, done, terminated,
        value if gamma_tensor is None else gamma_tensor,
        value if lmbda_tensor is None else lmbda_tensor,
        advantage, value_target,
        gamma, lmbda, T, F,
        *value.stride(), *next_value.stride(), *reward.stride(), *done.stride(),
        *terminated.stride(), *_scalar_strides(gamma_tensor), *_scalar_strides(lmbda_tensor),
        BT=block_t, BF=block_f,
        HAS_GAMMA_TENSOR=gamma_tensor is not None, HAS_LMBDA_TENSOR=lmbda_tensor is not None,
        ACC_FP64=advantage.dtype == torch.float64,
        num_warps=NUM_WARPS,
    )


def gae_bwd_triton(
    grad_advantage: Tensor, grad_value_target: Tensor, done: Tensor, terminated: Tensor,
    gamma: float, lmbda: float, gamma_tensor: Tensor | None, lmbda_tensor: Tensor | None,
    grad_value: Tensor, grad_next_value: Tensor, grad_reward: Tensor, block_t: int | None = None,
) -> None:
    """Launch :func:`~fastmarl.kernels.gae.gae_bwd_kernel`; outputs are contiguous ``[R, T, F]``."""
    R, T, F = done.shape
    default_block_t, block_f = gae_block_sizes(F)
    block_t = block_t or default_block_t
    wrap_triton(gae_bwd_kernel)[gae_grid(R, F, block_f)](
        grad_advantage, grad_value_target, done, terminated,
        done if gamma_tensor is None else gamma_tensor,
        done if lmbda_tensor is None else lmbda_tensor,
        grad_value, grad_next_value, grad_reward,
        gamma, lmbda, T, F,
        *grad_advantage.stride(), *grad_value_target.stride(), *done.stride(),
        *terminated.stride(), *_scalar_strides(gamma_tensor), *_scalar_strides(lmbda_tensor),
        BT=block_t, BF=block_f,
        HAS_GAMMA_TENSOR=gamma_tensor is not None, HAS_LMBDA_TENSOR=lmbda_tensor is not None,
        ACC_FP64=torch.float64 in (grad_advantage.dtype, grad_value_target.dtype),
        num_warps=NUM_WARPS,
    )


# --------------------------------------------------------------------------- torch kernels


@custom_op("fastmarl::gae_torch", mutates_args=())
def _gae_torch(
    value: Tensor, next_value: Tensor, reward: Tensor, done: Tensor, terminated: Tensor,
    gamma: float, lmbda: float, gamma_tensor: Tensor | None, lmbda_tensor: Tensor | None,
) -> tuple[Tensor, Tensor]:
    return reference.gae_forward_rtf(
        value, next_value, reward, done, terminated, gamma, lmbda, gamma_tensor, lmbda_tensor
    )


@_gae_torch.register_fake
def _(value, next_value, reward, done, terminated, gamma, lmbda, gamma_tensor, lmbda_tensor):
    dtype = _out_dtype(value, next_value, reward)
    return value.new_empty(value.shape, dtype=dtype), value.new_empty(value.shape, dtype=dtype)


@custom_op("fastmarl::gae_backward_torch", mutates_args=())
def _gae_backward_torch(
    grad_advantage: Tensor, grad_value_target: Tensor, done: Tensor, terminated: Tensor,
    gamma: float, lmbda: float, gamma_tensor: Tensor | None, lmbda_tensor: Tensor | None,
    value_dtype: torch.dtype, next_value_dtype: torch.dtype, reward_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    return reference.gae_backward_rtf(
        grad_advantage, grad_value_target, done, terminated, gamma, lmbda, gamma_tensor,
        lmbda_tensor, value_dtype, next_value_dtype, reward_dtype,
    )


@_gae_backward_torch.register_fake
def _(grad_advantage, grad_value_target, done, terminated, gamma, lmbda, gamma_tensor,
      lmbda_tensor, value_dtype, next_value_dtype, reward_dtype):
    shape = done.shape
    return (
        grad_advantage.new_empty(shape, dtype=value_dtype),
        grad_advantage.new_empty(shape, dtype=next_value_dtype),
        grad_advantage.new_empty(shape, dtype=reward_dtype),
    )


# --------------------------------------------------------------------------- public ops


@triton_op("fastmarl::gae", mutates_args=())
def gae(
    value: Tensor, next_value: Tensor, reward: Tensor, done: Tensor, terminated: Tensor,
    gamma: float, lmbda: float, gamma_tensor: Tensor | None, lmbda_tensor: Tensor | None,
) -> tuple[Tensor, Tensor]:
    _check_rtf(value.shape, next_value=next_value, reward=reward, done=done,
               terminated=terminated, gamma_tensor=gamma_tensor, lmbda_tensor=lmbda_tensor)
    if not use_triton(value):
        return torch.ops.fastmarl.gae_torch(
            value, next_value, reward, done, terminated, gamma, lmbda, gamma_tensor, lmbda_tensor
        )
    dtype = _out_dtype(value, next_value, reward)
    advantage = torch.empty(value.shape, dtype=dtype, device=value.device)
    value_target = torch.empty(value.shape, dtype=dtype, device=value.device)
    gae_fwd_triton(value, next_value, reward, done, terminated, gamma, lmbda, gamma_tensor,
                   lmbda_tensor, advantage, value_target)
    return advantage, value_target


@triton_op("fastmarl::gae_backward", mutates_args=())
def gae_backward(
    grad_advantage: Tensor, grad_value_target: Tensor, done: Tensor, terminated: Tensor,
    gamma: float, lmbda: float, gamma_tensor: Tensor | None, lmbda_tensor: Tensor | None,
    value_dtype: torch.dtype, next_value_dtype: torch.dtype, reward_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    _check_rtf(done.shape, grad_advantage=grad_advantage, grad_value_target=grad_value_target,
               terminated=terminated, gamma_tensor=gamma_tensor, lmbda_tensor=lmbda_tensor)
    if not use_triton(done):
        return torch.ops.fastmarl.gae_backward_torch(
            grad_advantage, grad_value_target, done, terminated, gamma, lmbda, gamma_tensor,
            lmbda_tensor, value_dtype, next_value_dtype, reward_dtype,
        )
    shape, device = done.shape, done.device
    grad_value = torch.empty(shape, dtype=value_dtype, device=device)
    grad_next_value = torch.empty(shape, dtype=next_value_dtype, device=device)
    grad_reward = torch.empty(shape, dtype=reward_dtype, device=device)
    gae_bwd_triton(grad_advantage, grad_value_target, done, terminated, gamma, lmbda,
                   gamma_tensor, lmbda_tensor, grad_value, grad_next_value, grad_reward)
    return grad_value, grad_next_value, grad_reward


def _setup_context(ctx, inputs, output):
    value, next_value, reward, done, terminated, gamma, lmbda, gamma_tensor, lmbda_tensor = inputs
    # The backward needs only the flags and γ/λ: no value is saved.
    ctx.save_for_backward(done, terminated, gamma_tensor, lmbda_tensor)
    ctx.gamma, ctx.lmbda = gamma, lmbda
    ctx.dtypes = (value.dtype, next_value.dtype, reward.dtype)


def _backward(ctx, grad_advantage, grad_value_target):
    done, terminated, gamma_tensor, lmbda_tensor = ctx.saved_tensors
    if grad_advantage is None:
        grad_advantage = torch.zeros_like(grad_value_target)
    if grad_value_target is None:
        grad_value_target = torch.zeros_like(grad_advantage)
    grad_value, grad_next_value, grad_reward = torch.ops.fastmarl.gae_backward(
        grad_advantage, grad_value_target, done, terminated, ctx.gamma, ctx.lmbda,
        gamma_tensor, lmbda_tensor, *ctx.dtypes,
    )
    # γ/λ tensors get no gradient here: the functional sends inputs whose γ or λ requires grad
    # to the differentiable reference instead of this op.
    return grad_value, grad_next_value, grad_reward, None, None, None, None, None, None


gae.register_autograd(_backward, setup_context=_setup_context)
