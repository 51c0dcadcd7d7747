"""``torch.ops.fastmarl.ppo_clip`` and ``torch.ops.fastmarl.ppo_critic``: PPO's losses as ops.

All operands are ``[N, M]`` (dim 0 of the sample shape, the product of the rest)::

    fastmarl::ppo_clip(log_prob, prev_log_prob, advantage, clip_low, clip_high, num_groups,
                       normalize, reduction)
        -> (loss, clip_fraction, kl_approx, ess [M], max_ratio, mean_ratio, adv_mean [G], adv_std [G])
    fastmarl::ppo_clip_backward(grad_loss, log_prob, prev_log_prob, advantage, clip_low,
                                clip_high, adv_mean, adv_std, num_groups, reduction) -> grad_log_prob
    fastmarl::ppo_critic(value, target, old_value, clip_value, coeff, loss_type, reduction,
                         explained_variance) -> (loss, value_clip_fraction, explained_variance [M])
    fastmarl::ppo_critic_backward(grad_loss, value, target, old_value, clip_value, coeff,
                                  loss_type, reduction) -> grad_value

``clip_low``/``clip_high`` are TorchRL's log-space bounds ``log1p(-ε_low)``, ``log1p(ε_high)``
as 0-dim tensors, like ``clip_value`` and ``coeff``: read by the kernels, never synced.
``loss`` is ``[N, M]`` for ``reduction="none"`` and 0-dim otherwise. The surrogate's gradient
reaches ``log_prob`` only and the critic's ``value`` only; the functionals in
:mod:`fastmarl.functional` send anything else that requires grad to the differentiable
reference. ``adv_mean``/``adv_std`` (0 and 1 without normalisation) are outputs so that the
backward reuses them.

CUDA tensors go to the Triton launchers below (float16/bfloat16/float32; float64 and more than
``MAX_COLUMNS`` columns take the torch path), everything else to the torch kernels of
:mod:`fastmarl.reference`, registered as opaque custom ops. Running the kernels on CPU tensors:
``TRITON_INTERPRET=1`` and call :func:`ppo_clip_triton` / :func:`ppo_clip_bwd_triton` /
:func:`ppo_critic_triton` / :func:`ppo_critic_bwd_triton` directly (``tests/test_ppo_triton.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.library import custom_op, triton_op, wrap_triton

from fastmarl import reference
from fastmarl.ops._triton import HAS_TRITON, use_triton

if HAS_TRITON:
    import triton

    from fastmarl.kernels import ppo as K

__all__ = ["ppo_clip_triton", "ppo_clip_bwd_triton", "ppo_critic_triton", "ppo_critic_bwd_triton"]

_REDUCTION_CODE = {"mean": 0, "sum": 1, "none": 2}
_LOSS_CODE = {"l1": 0, "l2": 1, "smooth_l1": 2}
MAX_COLUMNS = 256


def _out_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_args(name: str, reduction: str, shape, **tensors) -> None:
    # The functionals validate user input with full messages; this guards direct op calls.
    if reduction not in _REDUCTION_CODE:
        raise ValueError(f"fastmarl::{name}: reduction must be one of {list(_REDUCTION_CODE)}, got {reduction!r}")
    for arg, x in tensors.items():
        if x is not None and tuple(x.shape) != tuple(shape):
            raise ValueError(f"fastmarl::{name}: {arg} has shape {tuple(x.shape)}, expected [N, M] = {tuple(shape)}")


def _kernel_path(x: Tensor, dtype: torch.dtype) -> bool:
    return use_triton(x) and dtype != torch.float64 and x.shape[1] <= MAX_COLUMNS


# --------------------------------------------------------------------------- Triton launchers


def ppo_clip_triton(log_prob, prev_log_prob, advantage, clip_low, clip_high, num_groups, normalize,
                    reduction, loss, clip_fraction, kl_approx, ess, max_ratio, mean_ratio,
                    adv_mean, adv_std) -> None:
    """Two launches: statistics partials, then the loss (see :mod:`fastmarl.kernels.ppo`)."""
    N, M = log_prob.shape
    block_n, block_m = K.ppo_block_sizes(M)
    n_parts = triton.cdiv(N, block_n)
    f32 = dict(dtype=torch.float32, device=log_prob.device)
    col = [torch.empty(n_parts, M, **f32) for _ in range(6)]  # count, mean, M2, lw max, Σe, Σe²
    scal = [torch.empty(n_parts, **f32) for _ in range(5)]  # kl, ratio Σ, ratio max, loss, clips
    ticket = torch.empty(1, dtype=torch.int32, device=log_prob.device)
    strides = (*log_prob.stride(), *prev_log_prob.stride(), *advantage.stride())
    wrap_triton(K.ppo_clip_stats_kernel)[(n_parts,)](
        log_prob, prev_log_prob, advantage, *col, *scal[:3], ticket, N, M, *strides,
        BN=block_n, BM=block_m, NORMALIZE=normalize, num_warps=K.NUM_WARPS,
    )
    wrap_triton(K.ppo_clip_loss_kernel)[(n_parts,)](
        log_prob, prev_log_prob, advantage, clip_low, clip_high, *col, *scal, ticket,
        loss, clip_fraction, kl_approx, ess, max_ratio, mean_ratio, adv_mean, adv_std,
        N, M, num_groups, n_parts, reference.ADVANTAGE_STD_EPS, *strides,
        BN=block_n, BM=block_m, BG=triton.next_power_of_2(num_groups), BLOCK_P=K.BLOCK_P,
        NORMALIZE=normalize, REDUCTION=_REDUCTION_CODE[reduction], num_warps=K.NUM_WARPS,
    )


def ppo_clip_bwd_triton(grad_loss, log_prob, prev_log_prob, advantage, clip_low, clip_high,
                        adv_mean, adv_std, num_groups, reduction, grad_log_prob) -> None:
    N, M = log_prob.shape
    block_n, block_m = K.ppo_block_sizes(M)
    grad_strides = grad_loss.stride() if reduction == "none" else (0, 0)
    wrap_triton(K.ppo_clip_bwd_kernel)[(triton.cdiv(N, block_n),)](
        grad_loss, log_prob, prev_log_prob, advantage, clip_low, clip_high, adv_mean, adv_std,
        grad_log_prob, N, M, num_groups,
        *log_prob.stride(), *prev_log_prob.stride(), *advantage.stride(), *grad_strides,
        BN=block_n, BM=block_m, REDUCTION=_REDUCTION_CODE[reduction], num_warps=K.NUM_WARPS,
    )


def ppo_critic_triton(value, target, old_value, clip_value, coeff, loss_type, reduction,
                      explained_variance, loss, clip_fraction, ev) -> None:
    """Two launches: per-element loss with partials, then one program that finalises."""
    N, M = value.shape
    block_n, block_m = K.ppo_block_sizes(M)
    n_parts = triton.cdiv(N, block_n)
    f32 = dict(dtype=torch.float32, device=value.device)
    scal = [torch.empty(n_parts, **f32) for _ in range(2)]  # loss, clips
    col = [torch.empty(n_parts, M, **f32) for _ in range(5)]  # t count, t mean, t M2, r mean, r M2
    old = value if old_value is None else old_value
    common = dict(REDUCTION=_REDUCTION_CODE[reduction], HAS_CLIP=clip_value is not None)
    wrap_triton(K.ppo_critic_kernel)[(n_parts,)](
        value, target, old, value if clip_value is None else clip_value,
        value if coeff is None else coeff, loss, *scal, *col, N, M,
        *value.stride(), *target.stride(), *old.stride(),
        BN=block_n, BM=block_m, LOSS=_LOSS_CODE[loss_type], HAS_COEFF=coeff is not None,
        EXPLAINED_VARIANCE=explained_variance, num_warps=K.NUM_WARPS, **common,
    )
    wrap_triton(K.ppo_critic_finalize_kernel)[(1,)](
        *scal, *col, loss, clip_fraction, ev, N, M, n_parts, torch.finfo(target.dtype).eps,
        BM=block_m, BLOCK_P=K.BLOCK_P, EXPLAINED_VARIANCE=explained_variance,
        num_warps=K.NUM_WARPS, **common,
    )


def ppo_critic_bwd_triton(grad_loss, value, target, old_value, clip_value, coeff, loss_type,
                          reduction, grad_value) -> None:
    N, M = value.shape
    block_n, block_m = K.ppo_block_sizes(M)
    old = value if old_value is None else old_value
    grad_strides = grad_loss.stride() if reduction == "none" else (0, 0)
    wrap_triton(K.ppo_critic_bwd_kernel)[(triton.cdiv(N, block_n),)](
        grad_loss, value, target, old, value if clip_value is None else clip_value,
        value if coeff is None else coeff, grad_value, N, M,
        *value.stride(), *target.stride(), *old.stride(), *grad_strides,
        BN=block_n, BM=block_m, LOSS=_LOSS_CODE[loss_type], REDUCTION=_REDUCTION_CODE[reduction],
        HAS_CLIP=clip_value is not None, HAS_COEFF=coeff is not None, num_warps=K.NUM_WARPS,
    )


# --------------------------------------------------------------------------- torch kernels


@custom_op("fastmarl::ppo_clip_torch", mutates_args=())
def _ppo_clip_torch(
    log_prob: Tensor, prev_log_prob: Tensor, advantage: Tensor, clip_low: Tensor,
    clip_high: Tensor, num_groups: int, normalize: bool, reduction: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    out = reference.ppo_clip_forward_2d(
        log_prob, prev_log_prob, advantage, clip_low, clip_high, num_groups, normalize, reduction
    )
    dtype = _out_dtype(log_prob, prev_log_prob, advantage)
    stats = _stats_dtype(dtype)
    return (*(x.to(dtype) for x in out[:6]), out[6].to(stats), out[7].to(stats))


def _ppo_clip_meta(log_prob, prev_log_prob, advantage, clip_low, clip_high, num_groups, normalize, reduction):
    N, M = log_prob.shape
    dtype = _out_dtype(log_prob, prev_log_prob, advantage)
    new = lambda *shape, dt=dtype: log_prob.new_empty(shape, dtype=dt)  # noqa: E731
    stats = _stats_dtype(dtype)
    loss = new(N, M) if reduction == "none" else new()
    return loss, new(), new(), new(M), new(), new(), new(num_groups, dt=stats), new(num_groups, dt=stats)


_ppo_clip_torch.register_fake(_ppo_clip_meta)


@custom_op("fastmarl::ppo_clip_backward_torch", mutates_args=())
def _ppo_clip_backward_torch(
    grad_loss: Tensor, log_prob: Tensor, prev_log_prob: Tensor, advantage: Tensor,
    clip_low: Tensor, clip_high: Tensor, adv_mean: Tensor, adv_std: Tensor, num_groups: int,
    reduction: str,
) -> Tensor:
    grad = reference.ppo_clip_backward_2d(
        grad_loss, log_prob, prev_log_prob, advantage, clip_low, clip_high, adv_mean, adv_std,
        num_groups, reduction,
    )
    return grad.to(log_prob.dtype)


@_ppo_clip_backward_torch.register_fake
def _(grad_loss, log_prob, prev_log_prob, advantage, clip_low, clip_high, adv_mean, adv_std, num_groups, reduction):
    return torch.empty_like(log_prob, memory_format=torch.contiguous_format)


@custom_op("fastmarl::ppo_critic_torch", mutates_args=())
def _ppo_critic_torch(
    value: Tensor, target: Tensor, old_value: Tensor | None, clip_value: Tensor | None,
    coeff: Tensor | None, loss_type: str, reduction: str, explained_variance: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    loss, clip_fraction, ev = reference.ppo_critic_forward_2d(
        value, target, old_value, clip_value, coeff, loss_type, reduction
    )
    dtype = _out_dtype(value, target)
    return loss.to(dtype), clip_fraction.to(dtype), ev.to(dtype)


def _ppo_critic_meta(value, target, old_value, clip_value, coeff, loss_type, reduction, explained_variance):
    N, M = value.shape
    dtype = _out_dtype(value, target)
    loss = value.new_empty((N, M) if reduction == "none" else (), dtype=dtype)
    return loss, value.new_empty((), dtype=dtype), value.new_empty((M,), dtype=dtype)


_ppo_critic_torch.register_fake(_ppo_critic_meta)


@custom_op("fastmarl::ppo_critic_backward_torch", mutates_args=())
def _ppo_critic_backward_torch(
    grad_loss: Tensor, value: Tensor, target: Tensor, old_value: Tensor | None,
    clip_value: Tensor | None, coeff: Tensor | None, loss_type: str, reduction: str,
) -> Tensor:
    grad = reference.ppo_critic_backward_2d(
        grad_loss, value, target, old_value, clip_value, coeff, loss_type, reduction
    )
    return grad.to(value.dtype)


@_ppo_critic_backward_torch.register_fake
def _(grad_loss, value, target, old_value, clip_value, coeff, loss_type, reduction):
    return torch.empty_like(value, memory_format=torch.contiguous_format)


# --------------------------------------------------------------------------- public ops


@triton_op("fastmarl::ppo_clip", mutates_args=())
def ppo_clip(
    log_prob: Tensor, prev_log_prob: Tensor, advantage: Tensor, clip_low: Tensor,
    clip_high: Tensor, num_groups: int, normalize: bool, reduction: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    _check_args("ppo_clip", reduction, log_prob.shape, prev_log_prob=prev_log_prob, advantage=advantage)
    dtype = _out_dtype(log_prob, prev_log_prob, advantage)
    if not _kernel_path(log_prob, dtype):
        return torch.ops.fastmarl.ppo_clip_torch(
            log_prob, prev_log_prob, advantage, clip_low, clip_high, num_groups, normalize, reduction
        )
    out = _ppo_clip_meta(log_prob, prev_log_prob, advantage, clip_low, clip_high, num_groups,
                         normalize, reduction)
    ppo_clip_triton(log_prob, prev_log_prob, advantage, clip_low, clip_high, num_groups,
                    normalize, reduction, *out)
    return out


@triton_op("fastmarl::ppo_clip_backward", mutates_args=())
def ppo_clip_backward(
    grad_loss: Tensor, log_prob: Tensor, prev_log_prob: Tensor, advantage: Tensor,
    clip_low: Tensor, clip_high: Tensor, adv_mean: Tensor, adv_std: Tensor, num_groups: int,
    reduction: str,
) -> Tensor:
    dtype = _out_dtype(log_prob, prev_log_prob, advantage)
    if not _kernel_path(log_prob, dtype):
        return torch.ops.fastmarl.ppo_clip_backward_torch(
            grad_loss, log_prob, prev_log_prob, advantage, clip_low, clip_high, adv_mean,
            adv_std, num_groups, reduction,
        )
    grad = torch.empty(log_prob.shape, dtype=log_prob.dtype, device=log_prob.device)
    ppo_clip_bwd_triton(grad_loss, log_prob, prev_log_prob, advantage, clip_low, clip_high,
                        adv_mean, adv_std, num_groups, reduction, grad)
    return grad


@triton_op("fastmarl::ppo_critic", mutates_args=())
def ppo_critic(
    value: Tensor, target: Tensor, old_value: Tensor | None, clip_value: Tensor | None,
    coeff: Tensor | None, loss_type: str, reduction: str, explained_variance: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    _check_args("ppo_critic", reduction, value.shape, target=target, old_value=old_value)
    if loss_type not in _LOSS_CODE:
        raise ValueError(f"fastmarl::ppo_critic: loss_type must be one of {list(_LOSS_CODE)}, got {loss_type!r}")
    if clip_value is not None and old_value is None:
        raise ValueError("fastmarl::ppo_critic: clip_value needs old_value")
    dtype = _out_dtype(value, target)
    if not _kernel_path(value, dtype):
        return torch.ops.fastmarl.ppo_critic_torch(
            value, target, old_value, clip_value, coeff, loss_type, reduction, explained_variance
        )
    loss, clip_fraction, ev = _ppo_critic_meta(value, target, old_value, clip_value, coeff,
                                               loss_type, reduction, explained_variance)
    ppo_critic_triton(value, target, old_value, clip_value, coeff, loss_type, reduction,
                      explained_variance, loss, clip_fraction, ev)
    return loss, clip_fraction, ev


@triton_op("fastmarl::ppo_critic_backward", mutates_args=())
def ppo_critic_backward(
    grad_loss: Tensor, value: Tensor, target: Tensor, old_value: Tensor | None,
    clip_value: Tensor | None, coeff: Tensor | None, loss_type: str, reduction: str,
) -> Tensor:
    dtype = _out_dtype(value, target)
    if not _kernel_path(value, dtype):
        return torch.ops.fastmarl.ppo_critic_backward_torch(
            grad_loss, value, target, old_value, clip_value, coeff, loss_type, reduction
        )
    grad = torch.empty(value.shape, dtype=value.dtype, device=value.device)
    ppo_critic_bwd_triton(grad_loss, value, target, old_value, clip_value, coeff, loss_type,
                          reduction, grad)
    return grad


def _clip_setup(ctx, inputs, output):
    log_prob, prev_log_prob, advantage, clip_low, clip_high, num_groups, normalize, reduction = inputs
    adv_mean, adv_std = output[6], output[7]
    ctx.mark_non_differentiable(*output[1:])
    ctx.save_for_backward(log_prob, prev_log_prob, advantage, clip_low, clip_high, adv_mean, adv_std)
    ctx.num_groups, ctx.reduction = num_groups, reduction


def _clip_backward(ctx, grad_loss, *unused_grads):
    # Only the loss is differentiable (TorchRL computes the side outputs without grad).
    log_prob, prev_log_prob, advantage, clip_low, clip_high, adv_mean, adv_std = ctx.saved_tensors
    grad = torch.ops.fastmarl.ppo_clip_backward(
        grad_loss, log_prob, prev_log_prob, advantage, clip_low, clip_high, adv_mean, adv_std,
        ctx.num_groups, ctx.reduction,
    )
    return grad, None, None, None, None, None, None, None


def _critic_setup(ctx, inputs, output):
    value, target, old_value, clip_value, coeff, loss_type, reduction, explained_variance = inputs
    ctx.mark_non_differentiable(*output[1:])
    ctx.save_for_backward(value, target, old_value, clip_value, coeff)
    ctx.loss_type, ctx.reduction = loss_type, reduction


def _critic_backward(ctx, grad_loss, *unused_grads):
    value, target, old_value, clip_value, coeff = ctx.saved_tensors
    grad = torch.ops.fastmarl.ppo_critic_backward(
        grad_loss, value, target, old_value, clip_value, coeff, ctx.loss_type, ctx.reduction
    )
    return grad, None, None, None, None, None, None, None


ppo_clip.register_autograd(_clip_backward, setup_context=_clip_setup)
ppo_critic.register_autograd(_critic_backward, setup_context=_critic_setup)
