"""``torch.ops.fastmarl.gae``: the GAE scan as a registered op with autograd, and its path policy.

Ops (all operands ``[R, T, F]``; γ is ``gamma * gamma_tensor`` when ``gamma_tensor`` is given,
else ``gamma``, λ likewise)::

    fastmarl::gae(value, next_value, reward, done, terminated, gamma, lmbda,
                  gamma_tensor, lmbda_tensor) -> (advantage, value_target)
    fastmarl::gae_backward(grad_advantage, grad_value_target, done, terminated, gamma, lmbda,
                           gamma_tensor, lmbda_tensor, value_dtype, next_value_dtype,
                           reward_dtype) -> (grad_value, grad_next_value, grad_reward)

Both are ``triton_op``s: CUDA tensors go to the Triton launchers (:mod:`.triton`), every other
tensor to the torch kernels (:mod:`.cpu`), which are registered as opaque custom ops
(``fastmarl::gae_cpu``, ``fastmarl::gae_backward_cpu``) because ``torch.compile`` traces into a
``triton_op`` and tracing a loop over T would unroll it. ``gae_backward`` is linear in its
gradients, so its own derivative is ``gae`` applied to the cotangents: double backward is exact.

:func:`select_path` is the policy; :func:`gae` runs it.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.library import custom_op

from fastmarl.ops.dtypes import result_dtype
from fastmarl.ops.gae import cpu
from fastmarl.ops.paths import Path, forced_path
from fastmarl.ops.triton_support import HAS_TRITON, on_triton_device, register_op

if HAS_TRITON:
    from fastmarl.ops.gae import triton as launchers

__all__ = ["gae", "select_path"]


def select_path(gamma_tensor: Tensor | None, lmbda_tensor: Tensor | None) -> Path:
    """How :func:`gae` runs.

    - ``Path.OP`` (the default, every device): ``fastmarl::gae``. On the CPU it is an opaque op
      also under ``torch.compile``: its loop must not be unrolled at T=10,000 (the compiled
      TorchRL loop is 10% faster at T=100, fastmarl from 4096x512x8 on: 298 against 509 ms).
    - ``Path.COMPOSITE`` when a γ or λ tensor requires grad: :func:`.cpu.gae_composite`, which
      autograd differentiates with respect to γ and λ too (the op's backward does not).

    ``Path.FUSED`` does not exist for GAE: the op's CPU kernel has no boundary cost worth
    avoiding next to its T Python steps.
    """
    forced = forced_path("gae")
    if forced is Path.FUSED:
        raise ValueError("force_path: GAE has no 'fused' path; use 'op' or 'composite'")
    if forced is not None:
        return forced
    if any(x is not None and x.requires_grad for x in (gamma_tensor, lmbda_tensor)):
        return Path.COMPOSITE
    return Path.OP


def gae(
    value: Tensor, next_value: Tensor, reward: Tensor, done: Tensor, terminated: Tensor,
    gamma: float, lmbda: float, gamma_tensor: Tensor | None, lmbda_tensor: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """``(advantage, value_target)`` ``[R, T, F]`` by the path :func:`select_path` picks."""
    if select_path(gamma_tensor, lmbda_tensor) is Path.COMPOSITE:
        g = gamma if gamma_tensor is None else gamma * gamma_tensor
        lm = lmbda if lmbda_tensor is None else lmbda * lmbda_tensor
        return cpu.gae_composite(value, next_value, reward, done, terminated, g, lm)
    return torch.ops.fastmarl.gae(value, next_value, reward, done, terminated, gamma, lmbda,
                                  gamma_tensor, lmbda_tensor)


def _check_rtf(shape, **tensors: Tensor | None) -> None:
    # The public functional validates user input with full messages; this guards direct op calls.
    for name, x in tensors.items():
        if x is not None and tuple(x.shape) != tuple(shape):
            raise ValueError(
                f"fastmarl::gae: {name} has shape {tuple(x.shape)}, expected [R, T, F] = "
                f"{tuple(shape)}; use fastmarl.functional.generalized_advantage_estimate to "
                "broadcast and reshape"
            )


@custom_op("fastmarl::gae_cpu", mutates_args=())
def gae_cpu(
    value: Tensor, next_value: Tensor, reward: Tensor, done: Tensor, terminated: Tensor,
    gamma: float, lmbda: float, gamma_tensor: Tensor | None, lmbda_tensor: Tensor | None,
) -> tuple[Tensor, Tensor]:
    return cpu.gae_forward(value, next_value, reward, done, terminated, gamma, lmbda,
                           gamma_tensor, lmbda_tensor)


@gae_cpu.register_fake
def _(value, next_value, reward, done, terminated, gamma, lmbda, gamma_tensor, lmbda_tensor):
    dtype = result_dtype(value, next_value, reward)
    return value.new_empty(value.shape, dtype=dtype), value.new_empty(value.shape, dtype=dtype)


@custom_op("fastmarl::gae_backward_cpu", mutates_args=())
def gae_backward_cpu(
    grad_advantage: Tensor, grad_value_target: Tensor, done: Tensor, terminated: Tensor,
    gamma: float, lmbda: float, gamma_tensor: Tensor | None, lmbda_tensor: Tensor | None,
    value_dtype: torch.dtype, next_value_dtype: torch.dtype, reward_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    return cpu.gae_backward(grad_advantage, grad_value_target, done, terminated, gamma, lmbda,
                            gamma_tensor, lmbda_tensor, value_dtype, next_value_dtype, reward_dtype)


@gae_backward_cpu.register_fake
def _(grad_advantage, grad_value_target, done, terminated, gamma, lmbda, gamma_tensor,
      lmbda_tensor, value_dtype, next_value_dtype, reward_dtype):
    return tuple(grad_advantage.new_empty(done.shape, dtype=dtype)
                 for dtype in (value_dtype, next_value_dtype, reward_dtype))


@register_op("fastmarl::gae")
def gae_op(
    value: Tensor, next_value: Tensor, reward: Tensor, done: Tensor, terminated: Tensor,
    gamma: float, lmbda: float, gamma_tensor: Tensor | None, lmbda_tensor: Tensor | None,
) -> tuple[Tensor, Tensor]:
    _check_rtf(value.shape, next_value=next_value, reward=reward, done=done,
               terminated=terminated, gamma_tensor=gamma_tensor, lmbda_tensor=lmbda_tensor)
    if not on_triton_device(value):
        return torch.ops.fastmarl.gae_cpu(value, next_value, reward, done, terminated, gamma,
                                          lmbda, gamma_tensor, lmbda_tensor)
    dtype = result_dtype(value, next_value, reward)
    advantage = torch.empty(value.shape, dtype=dtype, device=value.device)
    value_target = torch.empty(value.shape, dtype=dtype, device=value.device)
    launchers.gae_fwd(value, next_value, reward, done, terminated, gamma, lmbda, gamma_tensor,
                      lmbda_tensor, advantage, value_target)
    return advantage, value_target


@register_op("fastmarl::gae_backward")
def gae_backward_op(
    grad_advantage: Tensor, grad_value_target: Tensor, done: Tensor, terminated: Tensor,
    gamma: float, lmbda: float, gamma_tensor: Tensor | None, lmbda_tensor: Tensor | None,
    value_dtype: torch.dtype, next_value_dtype: torch.dtype, reward_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    _check_rtf(done.shape, grad_advantage=grad_advantage, grad_value_target=grad_value_target,
               terminated=terminated, gamma_tensor=gamma_tensor, lmbda_tensor=lmbda_tensor)
    if not on_triton_device(done):
        return torch.ops.fastmarl.gae_backward_cpu(
            grad_advantage, grad_value_target, done, terminated, gamma, lmbda, gamma_tensor,
            lmbda_tensor, value_dtype, next_value_dtype, reward_dtype,
        )
    shape, device = done.shape, done.device
    grad_value = torch.empty(shape, dtype=value_dtype, device=device)
    grad_next_value = torch.empty(shape, dtype=next_value_dtype, device=device)
    grad_reward = torch.empty(shape, dtype=reward_dtype, device=device)
    launchers.gae_bwd(grad_advantage, grad_value_target, done, terminated, gamma, lmbda,
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
    # γ/λ tensors get no gradient here: select_path sends a γ or λ that requires grad to the
    # composite path instead of this op.
    return grad_value, grad_next_value, grad_reward, None, None, None, None, None, None


def _backward_setup_context(ctx, inputs, output):
    grad_advantage, grad_value_target, done, terminated, gamma, lmbda, gamma_tensor, lmbda_tensor, *_ = inputs
    ctx.save_for_backward(done, terminated, gamma_tensor, lmbda_tensor)
    ctx.gamma, ctx.lmbda = gamma, lmbda
    ctx.grad_dtypes = (grad_advantage.dtype, grad_value_target.dtype)


def _backward_backward(ctx, cot_value, cot_next_value, cot_reward):
    # gae_backward is the transpose of the linear map (v, v', r) -> (A, G); the transpose of a
    # transpose is the map itself: (d grad_A, d grad_G) = gae(cot_v, cot_v', cot_r).
    done, terminated, gamma_tensor, lmbda_tensor = ctx.saved_tensors
    like = next(x for x in (cot_value, cot_next_value, cot_reward) if x is not None)
    cots = [torch.zeros_like(like) if x is None else x for x in (cot_value, cot_next_value, cot_reward)]
    d_grad_advantage, d_grad_value_target = torch.ops.fastmarl.gae(
        *cots, done, terminated, ctx.gamma, ctx.lmbda, gamma_tensor, lmbda_tensor
    )
    dtype_advantage, dtype_value_target = ctx.grad_dtypes
    return (d_grad_advantage.to(dtype_advantage), d_grad_value_target.to(dtype_value_target)) + (None,) * 9


gae_op.register_autograd(_backward, setup_context=_setup_context)
gae_backward_op.register_autograd(_backward_backward, setup_context=_backward_setup_context)
