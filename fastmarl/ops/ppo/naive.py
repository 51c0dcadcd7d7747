"""PPO's clipped surrogate and critic loss as TorchRL 0.14.1's ``ClipPPOLoss`` computes them: the
readable statement, the tests' float64 oracle and the benchmarks' baseline. Nothing at run time
imports this module.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchrl.objectives.utils import distance_loss

from fastmarl.ops.ppo.spec import ADVANTAGE_STD_EPS

__all__ = ["standardize_advantage", "ppo_clip", "ppo_critic"]


def standardize_advantage(advantage: Tensor, exclude_dims: tuple[int, ...] = ()) -> Tensor:
    """TorchRL's ``_standardize`` path of ``PPOLoss`` (no validity mask): mean and *unbiased* std
    over every dim but ``exclude_dims``, the std clamped at float32 resolution (1e-6).
    ``MAPPOLoss`` excludes the agent dim (-2 of ``[*B, A, 1]``): each agent on its own."""
    exclude = {d % advantage.ndim for d in exclude_dims}
    if len(exclude) == advantage.ndim:
        return advantage
    if not exclude:
        return (advantage - advantage.mean()) / advantage.std().clamp_min(ADVANTAGE_STD_EPS)
    dims = tuple(d for d in range(advantage.ndim) if d not in exclude)
    mean = advantage.mean(dims, keepdim=True)
    return (advantage - mean) / advantage.std(dims, keepdim=True).clamp_min(ADVANTAGE_STD_EPS)


def _reduce(x: Tensor, reduction: str) -> Tensor:
    return x.mean() if reduction == "mean" else x.sum() if reduction == "sum" else x


def ppo_clip(
    log_prob: Tensor,
    prev_log_prob: Tensor,
    advantage: Tensor,
    clip_low: Tensor | float,
    clip_high: Tensor | float,
    *,
    normalize: bool = False,
    exclude_dims: tuple[int, ...] = (),
    reduction: str = "mean",
) -> dict[str, Tensor]:
    """``ClipPPOLoss.forward``'s surrogate, op for op (proximal policy = behaviour policy).

    ``log_prob``/``prev_log_prob`` ``[*S]``, ``advantage`` ``[*S, 1]``; ``clip_low``/``clip_high``
    are the log-space bounds ``log1p(-ε_low)``/``log1p(ε_high)``. Returns TorchRL's entries:
    ``loss_objective`` (reduced, then ``squeeze(-1)``), ``clip_fraction``, ``kl_approx``, ``ESS``
    (over dim 0, divided by the batch), ``max_ratio``, ``mean_ratio``.
    """
    if normalize and advantage.numel() > 1:
        advantage = standardize_advantage(advantage, exclude_dims)
    log_weight = (log_prob - prev_log_prob).unsqueeze(-1)
    kl_approx = (prev_log_prob - log_prob).unsqueeze(-1)
    with torch.no_grad():
        lw = log_weight.squeeze(-1)
        ess = (2 * lw.logsumexp(0) - (2 * lw).logsumexp(0)).exp()
        batch = log_weight.shape[0]
    gain1 = log_weight.exp() * advantage
    log_weight_clip = log_weight.clamp(clip_low, clip_high)
    clip_fraction = (log_weight_clip != log_weight).to(log_weight.dtype).mean()
    gain2 = log_weight_clip.exp() * advantage
    gain = torch.stack([gain1, gain2], -1).min(dim=-1).values
    with torch.no_grad():
        ratio = log_weight.exp()
    return {
        "loss_objective": _reduce(-gain, reduction).squeeze(-1),
        "clip_fraction": clip_fraction,
        "kl_approx": kl_approx.detach().mean(),
        "ESS": ess / batch,
        "max_ratio": ratio.max(),
        "mean_ratio": ratio.mean(),
    }


def ppo_critic(
    target: Tensor,
    value: Tensor,
    old_value: Tensor | None = None,
    clip_value: Tensor | float | None = None,
    coeff: Tensor | float | None = None,
    *,
    loss_type: str = "smooth_l1",
    reduction: str = "mean",
    explained_variance: bool = True,
    eps: float | None = None,
) -> dict[str, Tensor]:
    """``PPOLoss.loss_critic`` after the value network (and any ValueNorm), op for op.

    ``eps`` of the explained variance is ``torch.finfo(target.dtype).eps``, TorchRL's; an oracle
    computing in float64 for inputs of another dtype passes that dtype's.

    ``target``/``value``/``old_value`` ``[*S, 1]``. Returns ``loss_critic`` (``coeff`` times the
    distance, the clipped one where worse, reduced then ``squeeze(-1)``),
    ``value_clip_fraction`` and ``explained_variance`` (over dim 0) when asked for.
    """
    loss = distance_loss(target, value, loss_function=loss_type)
    out = {}
    if clip_value is not None:
        pre_clipped = value - old_value
        clipped = pre_clipped.clamp(-clip_value, clip_value)
        with torch.no_grad():
            out["value_clip_fraction"] = (pre_clipped != clipped).to(value.dtype).mean()
        loss = torch.maximum(loss, distance_loss(target, old_value + clipped, loss_function=loss_type))
    if explained_variance:
        with torch.no_grad():
            tgt, pred = target.detach(), value.detach()
            residual_variance = torch.var(tgt - pred, correction=0, dim=0)
            out["explained_variance"] = 1.0 - residual_variance / (
                torch.var(tgt, correction=0, dim=0) + (torch.finfo(tgt.dtype).eps if eps is None else eps))
    if coeff is not None:
        loss = coeff * loss
    out["loss_critic"] = _reduce(loss, reduction).squeeze(-1)
    return out
