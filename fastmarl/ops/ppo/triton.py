"""Launchers of the PPO Triton kernels (:mod:`fastmarl.kernels.ppo`): arguments by keyword, the
per-program partials in one workspace allocation, block sizes from the column count only.

These are what ``fastmarl::ppo_clip``/``fastmarl::ppo_critic`` and their backward ops call on
CUDA, and what the interpreter tests call on CPU tensors under ``TRITON_INTERPRET=1``. Operands
are ``[N, M]`` (see :mod:`fastmarl.ops.ppo.cpu`).
"""

from __future__ import annotations

import torch
import triton
from torch import Tensor
from torch.library import wrap_triton

from fastmarl.kernels import ppo as kernels
from fastmarl.ops.ppo.spec import ADVANTAGE_STD_EPS

__all__ = ["covers", "ppo_clip_fwd", "ppo_clip_bwd", "ppo_critic_fwd", "ppo_critic_bwd"]

REDUCTION_MODE = {"mean": kernels.REDUCE_MEAN.value, "sum": kernels.REDUCE_SUM.value,
                  "none": kernels.REDUCE_NONE.value}
LOSS_MODE = {"l1": kernels.LOSS_L1.value, "l2": kernels.LOSS_L2.value,
             "smooth_l1": kernels.LOSS_SMOOTH_L1.value}

# Per-program partials, by the kernels' argument names: one [n_parts, M] row per program for
# the columns, one value per program for the scalars.
_CLIP_COLUMN_PARTIALS = ("p_count_ptr", "p_mean_ptr", "p_m2_ptr", "p_lw_max_ptr", "p_s1_ptr", "p_s2_ptr")
_CLIP_SCALAR_PARTIALS = ("p_kl_ptr", "p_ratio_sum_ptr", "p_ratio_max_ptr", "p_loss_ptr", "p_clip_ptr")
_CLIP_STATS_PARTIALS = _CLIP_COLUMN_PARTIALS + _CLIP_SCALAR_PARTIALS[:3]
_CRITIC_COLUMN_PARTIALS = ("p_t_count_ptr", "p_t_mean_ptr", "p_t_m2_ptr", "p_r_mean_ptr", "p_r_m2_ptr")
_CRITIC_SCALAR_PARTIALS = ("p_loss_ptr", "p_clip_ptr")


def covers(num_columns: int, dtype: torch.dtype) -> bool:
    """Whether the kernels take ``[N, num_columns]`` operands computing in ``dtype``: float64 and
    more than ``kernels.MAX_COLUMNS`` columns take the torch kernels."""
    return dtype != torch.float64 and num_columns <= kernels.MAX_COLUMNS


def _workspace(device, n_parts: int, num_columns: int, column_names, scalar_names, ticket: bool):
    # One fp32 allocation holds every partial (and the int32 completion ticket of the last
    # program): views of it by kernel argument name.
    sizes = [n_parts * num_columns] * len(column_names) + [n_parts] * len(scalar_names) + [int(ticket)]
    buffer = torch.empty(sum(sizes), dtype=torch.float32, device=device)
    views = buffer.split(sizes)
    named = {name: view.view(n_parts, num_columns) for name, view in zip(column_names, views)}
    named.update(zip(scalar_names, views[len(column_names):]))
    if ticket:
        named["ticket_ptr"] = views[-1].view(torch.int32)
    return named


def _strides(prefix: str, x: Tensor | None) -> dict[str, int]:
    n, m = (0, 0) if x is None else x.stride()
    return {f"s_{prefix}_n": n, f"s_{prefix}_m": m}


def ppo_clip_fwd(
    log_prob: Tensor, prev_log_prob: Tensor, advantage: Tensor, clip_low: Tensor,
    clip_high: Tensor, num_groups: int, normalize: bool, reduction: str, *, loss: Tensor,
    clip_fraction: Tensor, kl_approx: Tensor, ess: Tensor, max_ratio: Tensor,
    mean_ratio: Tensor, adv_mean: Tensor, adv_std: Tensor, block_n: int | None = None,
) -> None:
    """Two launches: statistics partials, then the loss (see :mod:`fastmarl.kernels.ppo`).
    ``block_n`` overrides the rows per program (tests cross programs at small N)."""
    N, M = log_prob.shape
    default_block_n, block_m = kernels.ppo_block_sizes(M)
    block_n = block_n or default_block_n
    n_parts = triton.cdiv(N, block_n)
    partials = _workspace(log_prob.device, n_parts, M, _CLIP_COLUMN_PARTIALS,
                          _CLIP_SCALAR_PARTIALS, ticket=True)
    operands = dict(
        log_prob_ptr=log_prob, prev_log_prob_ptr=prev_log_prob, advantage_ptr=advantage, N=N, M=M,
        **_strides("lp", log_prob), **_strides("pv", prev_log_prob), **_strides("a", advantage),
        BN=block_n, BM=block_m, NORMALIZE=normalize, num_warps=kernels.NUM_WARPS,
    )
    wrap_triton(kernels.ppo_clip_stats_kernel)[(n_parts,)](
        **operands, **{name: partials[name] for name in _CLIP_STATS_PARTIALS},
        ticket_ptr=partials["ticket_ptr"],
    )
    wrap_triton(kernels.ppo_clip_loss_kernel)[(n_parts,)](
        **operands, **partials, clip_low_ptr=clip_low, clip_high_ptr=clip_high,
        loss_ptr=loss, clip_fraction_ptr=clip_fraction, kl_ptr=kl_approx, ess_ptr=ess,
        max_ratio_ptr=max_ratio, mean_ratio_ptr=mean_ratio, adv_mean_ptr=adv_mean,
        adv_std_ptr=adv_std, G=num_groups, n_parts=n_parts, eps=ADVANTAGE_STD_EPS,
        BG=triton.next_power_of_2(num_groups), BLOCK_P=kernels.BLOCK_P,
        REDUCTION=REDUCTION_MODE[reduction],
    )


def ppo_clip_bwd(
    grad_loss: Tensor, log_prob: Tensor, prev_log_prob: Tensor, advantage: Tensor,
    clip_low: Tensor, clip_high: Tensor, adv_mean: Tensor, adv_std: Tensor, num_groups: int,
    reduction: str, *, grad_log_prob: Tensor, block_n: int | None = None,
) -> None:
    N, M = log_prob.shape
    default_block_n, block_m = kernels.ppo_block_sizes(M)
    block_n = block_n or default_block_n
    wrap_triton(kernels.ppo_clip_bwd_kernel)[(triton.cdiv(N, block_n),)](
        grad_loss_ptr=grad_loss, log_prob_ptr=log_prob, prev_log_prob_ptr=prev_log_prob,
        advantage_ptr=advantage, clip_low_ptr=clip_low, clip_high_ptr=clip_high,
        adv_mean_ptr=adv_mean, adv_std_ptr=adv_std, grad_log_prob_ptr=grad_log_prob,
        N=N, M=M, G=num_groups,
        **_strides("lp", log_prob), **_strides("pv", prev_log_prob), **_strides("a", advantage),
        **_strides("g", grad_loss if reduction == "none" else None),
        BN=block_n, BM=block_m, REDUCTION=REDUCTION_MODE[reduction], num_warps=kernels.NUM_WARPS,
    )


def _critic_operands(value, target, old_value, clip_value, coeff, loss_type, reduction):
    # An absent old value, clip or coefficient is never read (HAS_CLIP / HAS_COEFF): any valid
    # pointer stands in.
    old = value if old_value is None else old_value
    return dict(
        value_ptr=value, target_ptr=target, old_value_ptr=old,
        clip_value_ptr=value if clip_value is None else clip_value,
        coeff_ptr=value if coeff is None else coeff,
        **_strides("v", value), **_strides("t", target), **_strides("o", old),
        LOSS=LOSS_MODE[loss_type], REDUCTION=REDUCTION_MODE[reduction],
        HAS_CLIP=clip_value is not None, HAS_COEFF=coeff is not None,
    )


def ppo_critic_fwd(
    value: Tensor, target: Tensor, old_value: Tensor | None, clip_value: Tensor | None,
    coeff: Tensor | None, loss_type: str, reduction: str, explained_variance: bool, *,
    loss: Tensor, clip_fraction: Tensor, ev: Tensor, block_n: int | None = None,
) -> None:
    """Two launches: per-element loss with partials, then one program that finalises."""
    N, M = value.shape
    default_block_n, block_m = kernels.ppo_block_sizes(M)
    block_n = block_n or default_block_n
    n_parts = triton.cdiv(N, block_n)
    partials = _workspace(value.device, n_parts, M, _CRITIC_COLUMN_PARTIALS,
                          _CRITIC_SCALAR_PARTIALS, ticket=False)
    operands = _critic_operands(value, target, old_value, clip_value, coeff, loss_type, reduction)
    wrap_triton(kernels.ppo_critic_kernel)[(n_parts,)](
        **operands, **partials, loss_ptr=loss, N=N, M=M, BN=block_n, BM=block_m,
        EXPLAINED_VARIANCE=explained_variance, num_warps=kernels.NUM_WARPS,
    )
    wrap_triton(kernels.ppo_critic_finalize_kernel)[(1,)](
        **partials, loss_ptr=loss, clip_fraction_ptr=clip_fraction, explained_variance_ptr=ev,
        N=N, M=M, n_parts=n_parts, eps=torch.finfo(target.dtype).eps, BM=block_m,
        BLOCK_P=kernels.BLOCK_P, REDUCTION=operands["REDUCTION"], HAS_CLIP=operands["HAS_CLIP"],
        EXPLAINED_VARIANCE=explained_variance, num_warps=kernels.NUM_WARPS,
    )


def ppo_critic_bwd(
    grad_loss: Tensor, value: Tensor, target: Tensor, old_value: Tensor | None,
    clip_value: Tensor | None, coeff: Tensor | None, loss_type: str, reduction: str, *,
    grad_value: Tensor, block_n: int | None = None,
) -> None:
    N, M = value.shape
    default_block_n, block_m = kernels.ppo_block_sizes(M)
    block_n = block_n or default_block_n
    wrap_triton(kernels.ppo_critic_bwd_kernel)[(triton.cdiv(N, block_n),)](
        **_critic_operands(value, target, old_value, clip_value, coeff, loss_type, reduction),
        grad_loss_ptr=grad_loss, grad_value_ptr=grad_value, N=N, M=M,
        **_strides("g", grad_loss if reduction == "none" else None),
        BN=block_n, BM=block_m, num_warps=kernels.NUM_WARPS,
    )
