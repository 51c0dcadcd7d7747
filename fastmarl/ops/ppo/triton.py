"""Launchers of the PPO Triton kernels (:mod:`fastmarl.kernels.ppo`): arguments by keyword, the
per-program partials in one reused workspace, the launch configuration from the column count
only (:func:`fastmarl.ops.tuning.launch_config`).

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
from fastmarl.ops import tuning
from fastmarl.ops.ppo.spec import ADVANTAGE_STD_EPS

__all__ = ["covers", "ppo_clip_fwd", "ppo_clip_bwd", "ppo_critic_fwd", "ppo_critic_bwd", "clear_workspaces"]

REDUCTION_MODE = {"mean": kernels.REDUCE_MEAN.value, "sum": kernels.REDUCE_SUM.value,
                  "none": kernels.REDUCE_NONE.value}
LOSS_MODE = {"l1": kernels.LOSS_L1.value, "l2": kernels.LOSS_L2.value,
             "smooth_l1": kernels.LOSS_SMOOTH_L1.value}

# Per-program partials, by the kernels' argument names: one [n_parts, M] row per program for
# the columns, one value per program for the scalars; and the int32 tickets, one per launch.
_CLIP_COLUMN_PARTIALS = ("p_count_ptr", "p_mean_ptr", "p_m2_ptr", "p_lw_max_ptr", "p_s1_ptr", "p_s2_ptr")
_CLIP_SCALAR_PARTIALS = ("p_kl_ptr", "p_ratio_sum_ptr", "p_ratio_max_ptr", "p_loss_ptr", "p_clip_ptr")
_CLIP_TICKETS = ("stats_ticket", "loss_ticket")
_CRITIC_COLUMN_PARTIALS = ("p_t_count_ptr", "p_t_mean_ptr", "p_t_m2_ptr", "p_r_mean_ptr", "p_r_m2_ptr")
_CRITIC_SCALAR_PARTIALS = ("p_loss_ptr", "p_clip_ptr")
_CRITIC_TICKETS = ("ticket_ptr",)


def covers(num_columns: int, dtype: torch.dtype) -> bool:
    """Whether the kernels take ``[N, num_columns]`` operands computing in ``dtype``: float64 and
    more than ``kernels.MAX_COLUMNS`` columns take the torch kernels."""
    return dtype != torch.float64 and num_columns <= kernels.MAX_COLUMNS


# --------------------------------------------------------------------------- the workspace

# One fp32 buffer per (op, device, stream), grown when a call needs more: the tickets at its
# start, then every partial. Each launch's last program resets its ticket to 0, so a buffer
# that starts zeroed is ready for the next call with no memset; calls on one stream run in
# order, so they never share it at once, and another stream gets its own buffer. Reusing it
# takes the forward from 1 + 11 allocations a call (a buffer per partial, as first written) to
# none: a torch.empty(1024) is ~5 us of host time on the CPU machine (the CUDA caching
# allocator's cost is to be measured on a GPU), against kernels of a few us at MARL sizes.
# The op's 8 outputs are still allocated each call: outputs of an op may not alias each other.
_WORKSPACES: dict[tuple, Tensor] = {}


def _reusable(like: Tensor) -> bool:
    # Only plain eager tensors use the cache. While torch.compile traces (FakeTensors, a
    # subclass), a fresh buffer is part of the graph, which Inductor plans like any other. While
    # a CUDA graph is captured, its kernels do not run: a buffer zeroed then would be zero only
    # when the graph replays, so it must not serve eager calls; the graph gets its own, zeroed
    # by a memset the graph replays.
    return (type(like) in (torch.Tensor, torch.nn.Parameter)
            and not (like.is_cuda and torch.cuda.is_current_stream_capturing()))


def _buffer(op: str, like: Tensor, numel: int) -> Tensor:
    if not _reusable(like):
        return torch.zeros(numel, dtype=torch.float32, device=like.device)
    stream = torch.cuda.current_stream(like.device).cuda_stream if like.is_cuda else None
    key = (op, like.device, stream)
    buffer = _WORKSPACES.get(key)
    if buffer is None or buffer.numel() < numel:
        # Doubling bounds the re-allocations of a growing minibatch; zeroed: fresh tickets.
        # inference_mode(False): a buffer made under inference_mode is reused outside it.
        size = max(numel, 2 * buffer.numel()) if buffer is not None else numel
        with torch.inference_mode(False):
            buffer = torch.zeros(size, dtype=torch.float32, device=like.device)
        _WORKSPACES[key] = buffer
    return buffer


def clear_workspaces() -> None:
    """Drop the cached workspaces (their memory goes back to the caching allocator)."""
    _WORKSPACES.clear()


def _workspace(op: str, like: Tensor, n_parts: int, num_columns: int, tickets, column_names,
               scalar_names) -> dict[str, Tensor]:
    # Views by kernel argument name into one buffer: the int32 tickets, then the partials.
    sizes = [len(tickets)] + [n_parts * num_columns] * len(column_names) + [n_parts] * len(scalar_names)
    buffer = _buffer(op, like, sum(sizes))
    views = buffer[:sum(sizes)].split(sizes)
    named = dict(zip(tickets, views[0].view(torch.int32).split(1)))
    named.update({name: view.view(n_parts, num_columns) for name, view in zip(column_names, views[1:])})
    named.update(zip(scalar_names, views[1 + len(column_names):]))
    return named


def _strides(prefix: str, x: Tensor | None) -> dict[str, int]:
    n, m = (0, 0) if x is None else x.stride()
    return {f"s_{prefix}_n": n, f"s_{prefix}_m": m}


def _launch_config(family: str, num_columns: int, device, block_n: int | None) -> tuple[int, int, int]:
    # (BN, BM, num_warps): BM from M, BN and warps from the table; ``block_n`` overrides BN.
    block_m = kernels.ppo_block_m(num_columns)
    config = tuning.launch_config(family, device, bm=block_m)
    return block_n or config["BN"], block_m, config["num_warps"]


# --------------------------------------------------------------------------- the surrogate


def ppo_clip_fwd(
    log_prob: Tensor, prev_log_prob: Tensor, advantage: Tensor, clip_low: Tensor,
    clip_high: Tensor, num_groups: int, normalize: bool, reduction: str, *, loss: Tensor,
    clip_fraction: Tensor, kl_approx: Tensor, ess: Tensor, max_ratio: Tensor,
    mean_ratio: Tensor, adv_mean: Tensor, adv_std: Tensor, block_n: int | None = None,
) -> None:
    """Two launches: statistics partials merged once by the last program, then the loss (see
    :mod:`fastmarl.kernels.ppo`). ``block_n`` overrides the rows per program (tests cross
    programs at small N)."""
    N, M = log_prob.shape
    block_n, block_m, num_warps = _launch_config("ppo_clip", M, log_prob.device, block_n)
    n_parts = triton.cdiv(N, block_n)
    work = _workspace("ppo_clip", log_prob, n_parts, M, _CLIP_TICKETS, _CLIP_COLUMN_PARTIALS,
                      _CLIP_SCALAR_PARTIALS)
    operands = dict(
        log_prob_ptr=log_prob, prev_log_prob_ptr=prev_log_prob, advantage_ptr=advantage,
        N=N, M=M, G=num_groups, n_parts=n_parts,
        **_strides("lp", log_prob), **_strides("pv", prev_log_prob), **_strides("a", advantage),
        BN=block_n, BM=block_m, num_warps=num_warps,
    )
    wrap_triton(kernels.ppo_clip_stats_kernel)[(n_parts,)](
        **operands, **{name: work[name] for name in _CLIP_COLUMN_PARTIALS + _CLIP_SCALAR_PARTIALS[:3]},
        ticket_ptr=work["stats_ticket"], kl_ptr=kl_approx, ess_ptr=ess, max_ratio_ptr=max_ratio,
        mean_ratio_ptr=mean_ratio, adv_mean_ptr=adv_mean, adv_std_ptr=adv_std,
        eps=ADVANTAGE_STD_EPS, BG=triton.next_power_of_2(num_groups), BLOCK_P=kernels.BLOCK_P,
        NORMALIZE=normalize,
    )
    wrap_triton(kernels.ppo_clip_loss_kernel)[(n_parts,)](
        **operands, clip_low_ptr=clip_low, clip_high_ptr=clip_high, adv_mean_ptr=adv_mean,
        adv_std_ptr=adv_std, p_loss_ptr=work["p_loss_ptr"], p_clip_ptr=work["p_clip_ptr"],
        ticket_ptr=work["loss_ticket"], loss_ptr=loss, clip_fraction_ptr=clip_fraction,
        BLOCK_P=kernels.BLOCK_P, REDUCTION=REDUCTION_MODE[reduction],
    )


def ppo_clip_bwd(
    grad_loss: Tensor, log_prob: Tensor, prev_log_prob: Tensor, advantage: Tensor,
    clip_low: Tensor, clip_high: Tensor, adv_mean: Tensor, adv_std: Tensor, num_groups: int,
    reduction: str, *, grad_log_prob: Tensor, block_n: int | None = None,
) -> None:
    N, M = log_prob.shape
    block_n, block_m, num_warps = _launch_config("ppo_clip_bwd", M, log_prob.device, block_n)
    wrap_triton(kernels.ppo_clip_bwd_kernel)[(triton.cdiv(N, block_n),)](
        grad_loss_ptr=grad_loss, log_prob_ptr=log_prob, prev_log_prob_ptr=prev_log_prob,
        advantage_ptr=advantage, clip_low_ptr=clip_low, clip_high_ptr=clip_high,
        adv_mean_ptr=adv_mean, adv_std_ptr=adv_std, grad_log_prob_ptr=grad_log_prob,
        N=N, M=M, G=num_groups,
        **_strides("lp", log_prob), **_strides("pv", prev_log_prob), **_strides("a", advantage),
        **_strides("g", grad_loss if reduction == "none" else None),
        BN=block_n, BM=block_m, REDUCTION=REDUCTION_MODE[reduction], num_warps=num_warps,
    )


# --------------------------------------------------------------------------- the critic


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
    """One launch: per-element loss with partials; the last program finalises."""
    N, M = value.shape
    block_n, block_m, num_warps = _launch_config("ppo_critic", M, value.device, block_n)
    n_parts = triton.cdiv(N, block_n)
    work = _workspace("ppo_critic", value, n_parts, M, _CRITIC_TICKETS, _CRITIC_COLUMN_PARTIALS,
                      _CRITIC_SCALAR_PARTIALS)
    wrap_triton(kernels.ppo_critic_kernel)[(n_parts,)](
        **_critic_operands(value, target, old_value, clip_value, coeff, loss_type, reduction),
        **work, loss_ptr=loss, clip_fraction_ptr=clip_fraction, explained_variance_ptr=ev,
        N=N, M=M, n_parts=n_parts, eps=torch.finfo(target.dtype).eps, BN=block_n, BM=block_m,
        BLOCK_P=kernels.BLOCK_P, EXPLAINED_VARIANCE=explained_variance, num_warps=num_warps,
    )


def ppo_critic_bwd(
    grad_loss: Tensor, value: Tensor, target: Tensor, old_value: Tensor | None,
    clip_value: Tensor | None, coeff: Tensor | None, loss_type: str, reduction: str, *,
    grad_value: Tensor, block_n: int | None = None,
) -> None:
    N, M = value.shape
    block_n, block_m, num_warps = _launch_config("ppo_critic_bwd", M, value.device, block_n)
    wrap_triton(kernels.ppo_critic_bwd_kernel)[(triton.cdiv(N, block_n),)](
        **_critic_operands(value, target, old_value, clip_value, coeff, loss_type, reduction),
        grad_loss_ptr=grad_loss, grad_value_ptr=grad_value, N=N, M=M,
        **_strides("g", grad_loss if reduction == "none" else None),
        BN=block_n, BM=block_m, num_warps=num_warps,
    )
