"""The PPO ops' torch kernels, for every tensor that is not on CUDA.

All operands are ``[N, M]``: dim 0 of the sample shape (the dim ``ESS`` and the explained
variance reduce over), and the product of the others. Advantage statistics are per group
``m % num_groups`` (the agent, the last sample dim); ``num_groups=1`` is global
standardisation.

- :func:`ppo_clip_forward` / :func:`ppo_clip_backward`, :func:`ppo_critic_forward` /
  :func:`ppo_critic_backward`: the kernels of ``fastmarl::ppo_clip`` and ``fastmarl::ppo_critic``
  and of their backward ops. They give :mod:`fastmarl.ops.ppo.naive`'s bits (TorchRL's) in
  float32 and float64 with fewer passes, and they are plain differentiable torch: under ordinary
  autograd they are also the ``composite`` path (what ``torch.compile`` fuses off CUDA).
- With ``residual=True`` the forwards also return the derivative the backward multiplies by,
  so that the ``fused`` path's backward is one multiply.
- :func:`standardize_advantage`: TorchRL's ``_standardize`` over any exclusion of dims, for the
  configurations the grouped kernels do not cover.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastmarl.ops.ppo.spec import ADVANTAGE_STD_EPS

__all__ = [
    "ppo_clip_forward", "ppo_clip_backward", "ppo_critic_forward", "ppo_critic_backward",
    "standardize_advantage",
]


def standardize_advantage(advantage: Tensor, exclude_dims: tuple[int, ...]) -> Tensor:
    """``(A - mean) / std.clamp_min(1e-6)`` over the dims not in ``exclude_dims`` (normalised,
    distinct, in range: the functional checks them), TorchRL's ``_standardize``.

    The mean is taken shifted, ``c + mean(A - c)`` with ``c`` the first sample of each
    standardised slice, and ``A - mean`` as ``(A - c) - mean(A - c)``: a constant advantage then
    standardises to exactly 0. TorchRL's plain mean rounds (0.7 in float32 over 3000 samples is
    off by an ulp), and the 1e-6 clamp of the std amplifies that into -0.115 for every sample.
    Elsewhere the two agree to rounding; the std is shift-invariant.
    """
    if len(exclude_dims) == advantage.ndim:
        return advantage
    dims = tuple(d for d in range(advantage.ndim) if d not in exclude_dims)
    shift = advantage[tuple(slice(0, 1) if d in dims else slice(None) for d in range(advantage.ndim))]
    shifted = advantage - shift
    mean = torch.mean(shifted, keepdim=True, dim=dims)
    std = torch.std(shifted, keepdim=True, dim=dims)
    return (shifted - mean) / std.clamp_min(ADVANTAGE_STD_EPS)


def _reduce(x: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    return x


def _distance(target: Tensor, value: Tensor, loss_type: str) -> Tensor:
    # torchrl.objectives.utils.distance_loss(target, value, loss_type), without its checks
    if loss_type == "l2":
        return torch.nn.functional.mse_loss(target, value, reduction="none")
    if loss_type == "l1":
        return torch.nn.functional.l1_loss(target, value, reduction="none")
    return torch.nn.functional.smooth_l1_loss(target, value, reduction="none")


def ppo_clip_forward(
    log_prob: Tensor,
    prev_log_prob: Tensor,
    advantage: Tensor,
    clip_low: Tensor,
    clip_high: Tensor,
    num_groups: int,
    normalize: bool,
    reduction: str,
    residual: bool = False,
) -> tuple[Tensor, ...]:
    """CPU kernel of ``fastmarl::ppo_clip`` on ``[N, M]`` (dim 0 of the sample shape, the rest).

    Advantage statistics are per group ``m % num_groups`` (the agent, the last sample dim);
    ``num_groups=1`` is global standardisation. Returns ``(loss, clip_fraction, kl_approx,
    ess [M], max_ratio, mean_ratio, adv_mean [G], adv_std [G])``: the last two, the clamped
    statistics (0 and 1 when not normalising), are what the op's backward needs. With
    ``residual=True`` a ninth entry, d gain / d log-weight ``[N, M]``, makes the backward one
    multiply (the ``fused`` path, :mod:`fastmarl.ops.ppo.op`).

    The values are :func:`fastmarl.ops.ppo.naive.ppo_clip`'s bits with fewer passes: ``where`` on the first
    minimum instead of ``stack(...).min``, one ``exp`` of the log-weight for the gain and the
    ratio statistics, the KL estimate as ``-mean(log_weight)`` (negation is exact); with
    ``normalize``, to rounding, the mean being taken shifted (:func:`standardize_advantage`).
    """
    N, M = log_prob.shape
    G = num_groups
    grouped = advantage.reshape(N, M // G, G, 1)
    if normalize and advantage.numel() > 1:
        # Shifted by each group's first sample (see standardize_advantage): exact for a constant
        # advantage, where a plain mean's rounding, amplified by the 1e-6 std clamp, gave -0.115.
        shift = grouped[:1, :1]
        shifted = grouped - shift
        mean = torch.mean(shifted, keepdim=True, dim=(0, 1, 3))
        std = torch.std(shifted, keepdim=True, dim=(0, 1, 3)).clamp_min(ADVANTAGE_STD_EPS)
        grouped = (shifted - mean) / std
        adv_mean, adv_std = (shift + mean).reshape(G), std.reshape(G)
    else:
        adv_mean, adv_std = advantage.new_zeros(G), advantage.new_ones(G)
    adv = grouped.reshape(N, M)
    log_weight = log_prob - prev_log_prob
    ratio = log_weight.exp()
    log_weight_clip = log_weight.clamp(clip_low, clip_high)
    gain1 = ratio * adv
    gain2 = log_weight_clip.exp() * adv
    # torch.stack([gain1, gain2]).min(-1): the first minimum, NaN wins.
    first = (gain1 <= gain2) | gain1.isnan()
    gain = torch.where(first, gain1, gain2)
    loss = _reduce(gain, reduction).neg()
    with torch.no_grad():
        ess = (2 * log_weight.logsumexp(0) - (2 * log_weight).logsumexp(0)).exp() / N
    out = (
        loss, (log_weight_clip != log_weight).to(log_weight.dtype).mean(), log_weight.mean().neg(), ess,
        ratio.max(), ratio.mean(), adv_mean, adv_std,
    )
    if not residual:
        return out
    inside = (log_weight >= clip_low) & (log_weight <= clip_high)
    return (*out, torch.where(first, gain1, gain2 * inside))

def ppo_clip_backward(
    grad_loss: Tensor,
    log_prob: Tensor,
    prev_log_prob: Tensor,
    advantage: Tensor,
    clip_low: Tensor,
    clip_high: Tensor,
    adv_mean: Tensor,
    adv_std: Tensor,
    num_groups: int,
    reduction: str,
) -> Tensor:
    """CPU kernel of ``fastmarl::ppo_clip_backward``: d loss / d log_prob on ``[N, M]``.

    ``min(gain1, gain2)`` sends the gradient to the first minimum, as ``torch.min(dim)`` does;
    the clamp passes it where ``low <= log_weight <= high`` (inclusive, as ``clamp``).
    """
    N, M = log_prob.shape
    G = num_groups
    adv = ((advantage.reshape(N, M // G, G) - adv_mean) / adv_std).reshape(N, M)
    log_weight = log_prob - prev_log_prob
    gain1 = log_weight.exp() * adv
    gain2 = log_weight.clamp(clip_low, clip_high).exp() * adv
    first = (gain1 <= gain2) | gain1.isnan()
    inside = (log_weight >= clip_low) & (log_weight <= clip_high)
    d_gain = torch.where(first, gain1, torch.where(inside, gain2, torch.zeros_like(gain2)))
    scale = 1.0 / log_prob.numel() if reduction == "mean" else 1.0
    return -(grad_loss * scale) * d_gain


def ppo_critic_forward(
    value: Tensor,
    target: Tensor,
    old_value: Tensor | None,
    clip_value: Tensor | None,
    coeff: Tensor | None,
    loss_type: str,
    reduction: str,
    residual: bool = False,
    eps: float | None = None,
) -> tuple[Tensor, ...]:
    """CPU kernel of ``fastmarl::ppo_critic`` on ``[N, M]``: ``(loss, value_clip_fraction,
    explained_variance [M])``; the clip fraction is 0 when there is no ``clip_value``. With
    ``residual=True`` a fourth entry, d loss / d value before the reduction ``[N, M]``, makes
    the backward one multiply. Same values as :func:`fastmarl.ops.ppo.naive.ppo_critic`.
    ``eps`` is the explained variance's (TorchRL's: the target dtype's resolution), default
    the one of ``target``'s dtype; callers that upcast half inputs pass the input's.
    """
    loss = _distance(target, value, loss_type)
    if residual:
        d_loss = _distance_grad(target, value, loss_type)
    clip_fraction = value.new_zeros(())
    if clip_value is not None:
        pre_clipped = value - old_value
        clipped = pre_clipped.clamp(-clip_value, clip_value)
        with torch.no_grad():
            clip_fraction = (pre_clipped != clipped).to(value.dtype).mean()
        value_clipped = old_value + clipped
        loss_clipped = _distance(target, value_clipped, loss_type)
        if residual:
            inside = (pre_clipped >= -clip_value) & (pre_clipped <= clip_value)
            d_clipped = _distance_grad(target, value_clipped, loss_type) * inside
            # torch.maximum splits the gradient evenly on ties.
            d_loss = torch.where(loss > loss_clipped, d_loss,
                                 torch.where(loss < loss_clipped, d_clipped, 0.5 * (d_loss + d_clipped)))
        loss = torch.maximum(loss, loss_clipped)
    with torch.no_grad():
        tgt, pred = target.detach(), value.detach()
        eps = torch.finfo(tgt.dtype).eps if eps is None else eps
        resid = torch.var(tgt - pred, correction=0, dim=0)
        total = torch.var(tgt, correction=0, dim=0)
        explained_variance = 1.0 - resid / (total + eps)
    if coeff is not None:
        loss = coeff * loss
        if residual:
            d_loss = coeff * d_loss
    out = (_reduce(loss, reduction), clip_fraction, explained_variance)
    return (*out, d_loss) if residual else out

def _distance_grad(target: Tensor, value: Tensor, loss_type: str) -> Tensor:
    # d distance(target, value) / d value, with torch's conventions at the kinks.
    diff = value - target
    if loss_type == "l2":
        return 2 * diff
    if loss_type == "l1":
        return diff.sign()
    return torch.where(diff.abs() < 1, diff, diff.sign())

def ppo_critic_backward(
    grad_loss: Tensor,
    value: Tensor,
    target: Tensor,
    old_value: Tensor | None,
    clip_value: Tensor | None,
    coeff: Tensor | None,
    loss_type: str,
    reduction: str,
) -> Tensor:
    """CPU kernel of ``fastmarl::ppo_critic_backward``: d loss / d value on ``[N, M]``.

    ``torch.maximum`` splits the gradient evenly on ties; the clamp passes it where
    ``-clip <= value - old <= clip``.
    """
    d_loss = ppo_critic_forward(value, target, old_value, clip_value, coeff, loss_type, "none",
                                   residual=True)[3]
    scale = 1.0 / value.numel() if reduction == "mean" else 1.0
    return (grad_loss * scale) * d_loss
