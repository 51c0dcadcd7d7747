"""Pure-torch semantics of fastmarl's ops.

Three roles, one file:

* ``*_reference`` functions are the readable statement of what an op computes, written op for
  op like TorchRL 0.14.1 so that, in float32 and float64, they give TorchRL's bits. They are
  differentiable with plain autograd: the float64 oracle of the tests and the baseline of the
  benchmarks.
* ``*_rtf`` functions are the CPU kernels behind the ``torch.library`` ops: the same arithmetic in
  the same order (hence the same bits), restructured for speed on ``[R, T, F]`` views (time
  chunks that stay in cache, in-place updates, one Python step per time step). Their gradients
  are written out by hand (``gae_backward_rtf``), because the op's backward is an op too.
* Nothing here imports Triton.

GAE conventions (TorchRL's ``generalized_advantage_estimate``)::

    delta_t = r_t + (γ_t * (1 - terminated_t)) * V(s'_t) - V(s_t)     terminated cuts the bootstrap
    A_t     = delta_t + (λ_t * γ_t * (1 - done_t)) * A_{t+1}         done cuts the λ-trace
    G_t     = A_t + V(s_t)

with ``A_T = 0``. A row may hold several trajectories: each ``done`` starts a new one.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "gae_reference",
    "gae_forward_rtf",
    "gae_backward_rtf",
    "gae_accumulate_dtype",
    "standardize_advantage_reference",
    "ppo_clip_reference",
    "ppo_clip_forward_2d",
    "ppo_clip_backward_2d",
    "ppo_critic_reference",
    "ppo_critic_forward_2d",
    "ppo_critic_backward_2d",
    "QMIX_PARAM_NAMES",
    "qmix_reference",
    "qmix_forward_flat",
    "qmix_backward_flat",
    "qmix_grads_from_dz",
    "QMIX_CPU_CHUNK_ELEMENTS",
]

# Time steps per chunk of the CPU kernels: chunk temporaries of at most 2**18 elements (1 MiB in
# fp32) stay in cache. Measured on this project's 2-core CPU machine at B=4096, T=512, A=8:
# 148 ms with 2**18, 193 ms with 2**16, 298 ms unchunked; the small sizes were flat.
CPU_CHUNK_ELEMENTS = 1 << 18


def gae_reference(
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
    """TorchRL's loop GAE, op for op, on ``[*B, T, *F]`` tensors with time at ``time_dim``.

    Inputs must share one shape (γ/λ may be scalars or tensors broadcastable to it). Returns
    ``(advantage, value_target)``. Differentiable with respect to every floating input.
    """
    if terminated is None:
        terminated = done.clone()
    time_dim = time_dim % state_value.ndim

    def time_first(x):
        return x.movedim(time_dim, 0) if isinstance(x, Tensor) and x.ndim == state_value.ndim else x

    not_done = done.logical_not().int()
    not_terminated = terminated.logical_not().int()
    g_not_terminated = gamma * not_terminated
    delta = time_first(reward + (g_not_terminated * next_state_value) - state_value)
    discount = time_first(lmbda * gamma * not_done)
    steps = []
    prev_advantage = 0
    for t in reversed(range(delta.shape[0])):
        prev_advantage = delta[t] + (prev_advantage * discount[t])
        steps.append(prev_advantage)
    advantage = torch.stack(steps[::-1], 0).movedim(0, time_dim).to(next_state_value.dtype)
    return advantage, advantage + state_value


def gae_accumulate_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float64 if any operand is float64, else float32 (half inputs accumulate in float32)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _effective(scalar: float, tensor: Tensor | None):
    # The ops take γ as ``scalar * tensor`` (tensor optional); multiplying by 1.0 is exact but
    # costs a pass, so it is skipped.
    if tensor is None:
        return scalar
    if not any(tensor.stride()):
        # One value expanded to [R, T, F] (a TorchRL module's γ buffer): as a 0-dim tensor it
        # takes TensorIterator's scalar path, the same bits for less time.
        tensor = tensor.as_strided((), ())
    return tensor if scalar == 1.0 else scalar * tensor


def _time_chunks(num_rows_features: int, num_steps: int, reverse: bool):
    chunk = max(1, min(num_steps, CPU_CHUNK_ELEMENTS // max(1, num_rows_features)))
    starts = range(0, num_steps, chunk)
    for t0 in (reversed(starts) if reverse else starts):
        yield t0, min(t0 + chunk, num_steps)


def _window(x, window: slice):
    # The time window of an [R, T, F] operand; scalars and 0-dim tensors broadcast as they are.
    return x[:, window] if isinstance(x, Tensor) and x.ndim else x


def gae_forward_rtf(
    value: Tensor,
    next_value: Tensor,
    reward: Tensor,
    done: Tensor,
    terminated: Tensor,
    gamma: float,
    lmbda: float,
    gamma_tensor: Tensor | None,
    lmbda_tensor: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """CPU kernel of ``fastmarl::gae`` on ``[R, T, F]`` views (strides free, stride 0 welcome).

    Bit-identical to :func:`gae_reference` (and so to TorchRL's loop) for float32 and float64
    inputs; half inputs are computed in float32 and rounded once at the end.
    """
    R, T, F = value.shape
    out_dtype = torch.promote_types(torch.promote_types(value.dtype, next_value.dtype), reward.dtype)
    acc = gae_accumulate_dtype(out_dtype)
    device = value.device
    value, next_value, reward = value.to(acc), next_value.to(acc), reward.to(acc)
    g = _effective(gamma, gamma_tensor)
    lg = _effective(lmbda, lmbda_tensor) * g

    advantage = torch.empty(R, T, F, dtype=acc, device=device)
    value_target = torch.empty(R, T, F, dtype=acc, device=device)
    step_buffer = torch.empty(R, F, dtype=acc, device=device)
    later = None  # A_{t+1}, an [R, F] view into ``advantage``
    for t0, t1 in _time_chunks(R * F, T, reverse=True):
        w = slice(t0, t1)
        adv = advantage[:, w]
        # delta in TorchRL's order: (reward + (g * not_terminated) * next_value) - value. A bool
        # mask multiplies like TorchRL's int one (g * 1 is g, g * 0 is 0) and costs one pass
        # less: 1.21 against 1.58 ms at B=600, T=100, A=3 on this project's CPU machine.
        torch.mul(_window(g, w) * terminated[:, w].logical_not(), next_value[:, w], out=adv)
        adv.add_(reward[:, w]).sub_(value[:, w])
        discount = (_window(lg, w) * done[:, w].logical_not()).unbind(1)
        steps = adv.unbind(1)
        for i in range(t1 - t0 - 1, -1, -1):
            if later is not None:
                # delta_t + (A_{t+1} * discount_t): a multiply then an add, as TorchRL
                # (addcmul fuses them into an FMA and rounds differently).
                torch.mul(later, discount[i], out=step_buffer)
                steps[i].add_(step_buffer)
            later = steps[i]
        torch.add(adv, value[:, w], out=value_target[:, w])
    return advantage.to(out_dtype), value_target.to(out_dtype)


def gae_backward_rtf(
    grad_advantage: Tensor | None,
    grad_value_target: Tensor | None,
    done: Tensor,
    terminated: Tensor,
    gamma: float,
    lmbda: float,
    gamma_tensor: Tensor | None,
    lmbda_tensor: Tensor | None,
    value_dtype: torch.dtype,
    next_value_dtype: torch.dtype,
    reward_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    """CPU kernel of ``fastmarl::gae_backward``: gradients for value, next value and reward.

    The adjoint of the reverse recurrence runs forward in time::

        u_t = (dA_t + dG_t) + (λ_{t-1} γ_{t-1} (1 - done_{t-1})) u_{t-1}
        d reward_t = u_t,  d next_value_t = γ_t (1 - terminated_t) u_t,  d value_t = dG_t - u_t
    """
    grads = [g for g in (grad_advantage, grad_value_target) if g is not None]
    R, T, F = done.shape
    acc = gae_accumulate_dtype(*(x.dtype for x in grads))
    g = _effective(gamma, gamma_tensor)
    lg = _effective(lmbda, lmbda_tensor) * g

    u = torch.zeros(R, T, F, dtype=acc, device=done.device)
    for grad in grads:
        u.add_(grad)
    step_buffer = torch.empty(R, F, dtype=acc, device=done.device)
    earlier = None  # u_{t-1}
    for t0, t1 in _time_chunks(R * F, T, reverse=False):
        # discount of steps t0-1 .. t1-2, the ones that carry u into steps t0 .. t1-1
        first = max(t0 - 1, 0)
        lg_chunk = _window(lg, slice(first, t1 - 1))
        discount = (lg_chunk * done[:, first:t1 - 1].logical_not()).unbind(1)
        steps = u[:, t0:t1].unbind(1)
        for i in range(t1 - t0):
            if earlier is not None:
                torch.mul(earlier, discount[i + t0 - 1 - first], out=step_buffer)
                steps[i].add_(step_buffer)
            earlier = steps[i]

    grad_next_value = (g * terminated.logical_not()) * u
    grad_value = -u if grad_value_target is None else grad_value_target.to(acc) - u
    return grad_value.to(value_dtype), grad_next_value.to(next_value_dtype), u.to(reward_dtype)


# =========================================================================== PPO-clip surrogate

# TorchRL's ``_standardize`` clamps the std at float32 resolution whatever the dtype.
ADVANTAGE_STD_EPS = torch.finfo(torch.float32).resolution
PPO_REDUCTIONS = ("mean", "sum", "none")
CRITIC_LOSS_TYPES = ("l1", "l2", "smooth_l1")


def standardize_advantage_reference(advantage: Tensor, exclude_dims: tuple[int, ...] = ()) -> Tensor:
    """TorchRL's ``torchrl._utils._standardize`` path of ``PPOLoss`` (no validity mask).

    Mean and *unbiased* std over every dim but ``exclude_dims``; the std is clamped at float32
    resolution (1e-6). ``MAPPOLoss`` excludes the agent dim (-2 of ``[*B, A, 1]``), so each
    agent is standardised on its own.
    """
    exclude = {d % advantage.ndim for d in exclude_dims}
    dims = tuple(d for d in range(advantage.ndim) if d not in exclude)
    if not exclude:
        return (advantage - advantage.mean()) / advantage.std().clamp_min(ADVANTAGE_STD_EPS)
    mean = torch.mean(advantage, keepdim=True, dim=dims)
    std = torch.std(advantage, keepdim=True, dim=dims)
    return (advantage - mean) / std.clamp_min(ADVANTAGE_STD_EPS)


def ppo_clip_reference(
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

    Shapes: ``log_prob``/``prev_log_prob`` ``[*S]`` (one log-prob per sample and agent),
    ``advantage`` ``[*S, 1]``; ``clip_low``/``clip_high`` are the log-space bounds
    ``log1p(-ε_low)``/``log1p(ε_high)``. Returns TorchRL's output entries: ``loss_objective``
    (reduced, then ``squeeze(-1)``), ``clip_fraction``, ``kl_approx``, ``ESS`` (over dim 0,
    divided by the batch), ``max_ratio``, ``mean_ratio``.
    """
    if normalize and advantage.numel() > 1:
        advantage = standardize_advantage_reference(advantage, exclude_dims)
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


def _reduce(x: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    return x


def ppo_clip_forward_2d(
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
    multiply (the eager CPU path, :class:`fastmarl.functional._PPOClip`).

    The values are :func:`ppo_clip_reference`'s bits with fewer passes: ``where`` on the first
    minimum instead of ``stack(...).min``, one ``exp`` of the log-weight for the gain and the
    ratio statistics, the KL estimate as ``-mean(log_weight)`` (negation is exact).
    """
    N, M = log_prob.shape
    G = num_groups
    grouped = advantage.reshape(N, M // G, G, 1)
    if normalize and advantage.numel() > 1:
        mean = torch.mean(grouped, keepdim=True, dim=(0, 1, 3))
        std = torch.std(grouped, keepdim=True, dim=(0, 1, 3)).clamp_min(ADVANTAGE_STD_EPS)
        grouped = (grouped - mean) / std
        adv_mean, adv_std = mean.reshape(G), std.reshape(G)
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


def ppo_clip_backward_2d(
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


def ppo_critic_reference(
    target: Tensor,
    value: Tensor,
    old_value: Tensor | None = None,
    clip_value: Tensor | float | None = None,
    coeff: Tensor | float | None = None,
    *,
    loss_type: str = "smooth_l1",
    reduction: str = "mean",
    explained_variance: bool = True,
) -> dict[str, Tensor]:
    """``PPOLoss.loss_critic`` after the value network (and any ValueNorm), op for op.

    ``target``/``value``/``old_value`` ``[*S, 1]``. Returns ``loss_critic`` (``coeff`` times the
    distance, the clipped one where worse, reduced then ``squeeze(-1)``),
    ``value_clip_fraction`` and ``explained_variance`` (over dim 0) when asked for.
    """
    loss = _distance(target, value, loss_type)
    out = {}
    if clip_value is not None:
        pre_clipped = value - old_value
        clipped = pre_clipped.clamp(-clip_value, clip_value)
        with torch.no_grad():
            out["value_clip_fraction"] = (pre_clipped != clipped).to(value.dtype).mean()
        loss = torch.maximum(loss, _distance(target, old_value + clipped, loss_type))
    if explained_variance:
        with torch.no_grad():
            tgt, pred = target.detach(), value.detach()
            eps = torch.finfo(tgt.dtype).eps
            resid = torch.var(tgt - pred, correction=0, dim=0)
            total = torch.var(tgt, correction=0, dim=0)
            out["explained_variance"] = 1.0 - resid / (total + eps)
    if coeff is not None:
        loss = coeff * loss
    out["loss_critic"] = _reduce(loss, reduction).squeeze(-1)
    return out


def _distance(target: Tensor, value: Tensor, loss_type: str) -> Tensor:
    # torchrl.objectives.utils.distance_loss(target, value, loss_type)
    if loss_type == "l2":
        return torch.nn.functional.mse_loss(target, value, reduction="none")
    if loss_type == "l1":
        return torch.nn.functional.l1_loss(target, value, reduction="none")
    return torch.nn.functional.smooth_l1_loss(target, value, reduction="none")


def ppo_critic_forward_2d(
    value: Tensor,
    target: Tensor,
    old_value: Tensor | None,
    clip_value: Tensor | None,
    coeff: Tensor | None,
    loss_type: str,
    reduction: str,
    residual: bool = False,
) -> tuple[Tensor, ...]:
    """CPU kernel of ``fastmarl::ppo_critic`` on ``[N, M]``: ``(loss, value_clip_fraction,
    explained_variance [M])``; the clip fraction is 0 when there is no ``clip_value``. With
    ``residual=True`` a fourth entry, d loss / d value before the reduction ``[N, M]``, makes
    the backward one multiply. Same values as :func:`ppo_critic_reference`.
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
        eps = torch.finfo(tgt.dtype).eps
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


def ppo_critic_backward_2d(
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
    d_loss = ppo_critic_forward_2d(value, target, old_value, clip_value, coeff, loss_type, "none",
                                   residual=True)[3]
    scale = 1.0 / value.numel() if reduction == "mean" else 1.0
    return (grad_loss * scale) * d_loss


# =========================================================================== QMIX mixer

# The mixer's tensors in the order the qmix functions and ops take them: TorchRL's parameter
# names for one-layer hypernetworks (PyMARL), EPyMARL's nn.Sequential names for two-layer ones.
QMIX_PARAM_NAMES = {
    1: ("hyper_w_1.weight", "hyper_w_1.bias", "hyper_w_final.weight", "hyper_w_final.bias",
        "hyper_b_1.weight", "hyper_b_1.bias", "V.0.weight", "V.0.bias", "V.2.weight", "V.2.bias"),
    2: ("hyper_w_1.0.weight", "hyper_w_1.0.bias", "hyper_w_final.0.weight", "hyper_w_final.0.bias",
        "hyper_b_1.weight", "hyper_b_1.bias", "V.0.weight", "V.0.bias", "V.2.weight", "V.2.bias",
        "hyper_w_1.2.weight", "hyper_w_1.2.bias", "hyper_w_final.2.weight", "hyper_w_final.2.bias"),
}

# Samples per chunk of the QMIX CPU kernels: per-agent temporaries ([chunk, n, E]) of at most
# 2**20 elements (4 MiB in fp32) stay in the CPU machine's L3 from one op to the next. Mixer
# forward+backward, both cores, E=32, S=37 (ms, B=4096 / 65536): n=8: 9.5 / 260 with 2**16,
# 7.1 / 206 with 2**18, 6.9 / 170 with 2**20, 6.0 / 258 unchunked; n=32: 31 / 876, 21 / 614,
# 17 / 582, 19 / 823.
QMIX_CPU_CHUNK_ELEMENTS = 1 << 20


def qmix_reference(chosen_action_value: Tensor, state: Tensor, params) -> Tensor:
    """TorchRL's ``QMixer.mix``, op for op, with EPyMARL's two-layer hypernetworks as an option.

    ``chosen_action_value`` is ``[*B, n, 1]``, ``state`` ``[*B, *state_shape]`` (flattened to its
    ``S`` features as TorchRL does), ``params`` the mixer's tensors in ``QMIX_PARAM_NAMES`` order
    (10 for one-layer hypernetworks, 14 for two). Returns ``[*B, 1]``. With one-layer
    hypernetworks these are TorchRL's ops in TorchRL's order: its bits in float32 and float64.
    """
    linear, relu = torch.nn.functional.linear, torch.nn.functional.relu
    w1_w, w1_b, wf_w, wf_b, b1_w, b1_b, v1_w, v1_b, v2_w, v2_b, *second = params
    n_agents, embed = chosen_action_value.shape[-2], b1_w.shape[0]
    bs = chosen_action_value.shape[:-2]
    state = state.reshape(-1, w1_w.shape[1])
    chosen_action_value = chosen_action_value.reshape(-1, 1, n_agents)
    hyper_w_1 = linear(state, w1_w, w1_b)
    hyper_w_final = linear(state, wf_w, wf_b)
    if second:
        w12_w, w12_b, wf2_w, wf2_b = second
        hyper_w_1 = linear(relu(hyper_w_1), w12_w, w12_b)
        hyper_w_final = linear(relu(hyper_w_final), wf2_w, wf2_b)
    # First layer
    w1 = torch.abs(hyper_w_1)
    b1 = linear(state, b1_w, b1_b)
    w1 = w1.view(-1, n_agents, embed)
    b1 = b1.view(-1, 1, embed)
    hidden = torch.nn.functional.elu(torch.bmm(chosen_action_value, w1) + b1)  # [-1, 1, E]
    # Second layer
    w_final = torch.abs(hyper_w_final)
    w_final = w_final.view(-1, embed, 1)
    v = linear(relu(linear(state, v1_w, v1_b)), v2_w, v2_b).view(-1, 1, 1)
    y = torch.bmm(hidden, w_final) + v  # [-1, 1, 1]
    return y.view(*bs, 1)


def _to(x: Tensor, dtype: torch.dtype) -> Tensor:
    # ``Tensor.to`` is a dispatched op even when it returns ``x``: 3 us on the CPU machine, where
    # a MARL-sized mixer call is a few dozen ops.
    return x if x.dtype == dtype else x.to(dtype)


def _qmix_chunks(batch: int, n_agents: int, embed: int) -> list:
    # Row slices; [None] when one chunk covers the batch (then nothing is sliced).
    step = max(1, QMIX_CPU_CHUNK_ELEMENTS // (n_agents * embed))
    return [None] if batch <= step else [slice(r, r + step) for r in range(0, batch, step)]


def _rows(x: Tensor | None, chunk: slice | None) -> Tensor | None:
    return x if chunk is None or x is None else x[chunk]


def qmix_forward_flat(
    chosen_action_value: Tensor, state: Tensor, params: list[Tensor], need_residual: bool
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """CPU kernel of ``fastmarl::qmix`` on ``q`` ``[B, n]`` and ``state`` ``[B, S]``.

    Returns ``(q_tot [B, 1], hidden_pre [B, 1, E], z1 [B, C1], z2 [B, (n+1)E])``: the mixed
    value, the mixing layer's pre-activation, and the hypernetwork outputs before ``abs``/ReLU
    (``z1``: the four Linears that read the state, ``z2``: the second layers of two-layer
    hypernetworks). The last three are what :func:`qmix_backward_flat` reads; they are None when
    ``need_residual`` is False, and ``z2`` is None for one-layer hypernetworks.

    The four Linears that read the state run as one GEMM on concatenated weights, chunk by
    chunk of samples so that the elementwise work after it stays in cache; both mixing layers
    are one ``baddbmm`` each. Computed in float32 (float64 if any input is float64); ``q_tot``
    comes back in the promoted dtype of ``q``, ``state`` and the parameters.
    """
    acc = gae_accumulate_dtype(chosen_action_value.dtype, state.dtype, params[0].dtype)
    out_dtype = torch.promote_types(
        torch.promote_types(chosen_action_value.dtype, state.dtype), params[0].dtype
    )
    q, state = _to(chosen_action_value, acc), _to(state, acc)
    p = [_to(x, acc) for x in params]
    B, n = q.shape
    E = p[4].shape[0]
    rows = [p[0].shape[0], p[2].shape[0], E, E]
    chunks = _qmix_chunks(B, n, E)
    # Concatenating the weights copies C1*S elements a call: worth it but for a small batch and
    # wide weights. Both cores of the CPU machine, E=32: B=32, n=3, S=48: 19 us concatenated
    # against 53 us for four GEMMs; B=32, n=32, S=1440: 1369 against 1151 us; B=4096, n=32,
    # S=1440: 72 against 78 ms.
    separate = B < 512 and sum(rows) * state.shape[1] >= 1 << 18
    if not separate:
        weight, bias = torch.cat(p[0:8:2]), torch.cat(p[1:8:2])
    z1 = hidden_pre = y = z2 = None
    if chunks[0] is not None:
        # Without a backward to feed, the per-sample intermediates live in one chunk-sized
        # scratch reused chunk after chunk: a fresh [B, C1] buffer a call is a large allocation
        # that the OS maps and zeroes page by page. B=65536, n=3, E=32 (50 MB), interleaved
        # medians on the CPU machine (bench/interleaved.py): 55 ms against TorchRL's 30 with
        # the full buffer, 34 against 44 with one chunk of scratch.
        held = B if need_residual else min(B, chunks[0].stop)
        z1, hidden_pre, y = state.new_empty(held, sum(rows)), state.new_empty(held, 1, E), state.new_empty(B, 1, 1)
        z2 = state.new_empty(held, n * E + E) if len(p) == 14 else None
    for chunk in chunks:
        # Rows of the intermediates: the chunk's own, or the scratch's first rows.
        held_rows = chunk if need_residual or chunk is None else slice(0, min(chunk.stop, B) - chunk.start)
        # [c, C1]: hyper_w_1 (or its first layer), hyper_w_final (ditto), hyper_b_1, V.0
        if separate:
            z1_c = state.new_empty(B, sum(rows)) if chunk is None else z1[held_rows]
            for i, column in enumerate(z1_c.split(rows, dim=1)):
                torch.addmm(p[2 * i + 1], _rows(state, chunk), p[2 * i].t(), out=column)
        elif chunk is None:
            z1_c = torch.nn.functional.linear(state, weight, bias)
        else:
            z1_c = torch.addmm(bias, state[chunk], weight.t(), out=z1[held_rows])
        w1, wf, b1, v_hidden = z1_c.split(rows, dim=1)
        z2_c = None
        if len(p) == 14:
            # [c, nE + E]: the second layers, in one buffer for the backward
            z2_c = z1_c.new_empty(B, n * E + E) if chunk is None else z2[held_rows]
            h1, hf = w1.relu(), wf.relu()
            w1, wf = z2_c.split([n * E, E], dim=1)
            torch.addmm(p[11], h1, p[10].t(), out=w1)
            torch.addmm(p[13], hf, p[12].t(), out=wf)
        # [c, 1, E]: b1 + q @ |w1|, one [1, n] @ [n, E] per sample
        a = torch.baddbmm(b1.unsqueeze(1), _rows(q, chunk).unsqueeze(1), w1.abs().view(-1, n, E),
                          out=_rows(hidden_pre, held_rows))
        # [c, 1, 1]: V(s) + ELU(a) @ |wf|
        v = torch.nn.functional.linear(v_hidden.relu(), p[8], p[9])
        y_c = torch.baddbmm(v.unsqueeze(2), torch.nn.functional.elu(a), wf.abs().unsqueeze(2),
                            out=_rows(y, chunk))
        if chunk is None:
            z1, z2, hidden_pre, y = z1_c, z2_c, a, y_c
    if not need_residual:
        return _to(y.view(B, 1), out_dtype), None, None, None
    return _to(y.view(B, 1), out_dtype), hidden_pre, z1, z2


def qmix_backward_flat(
    grad_q_tot: Tensor, chosen_action_value: Tensor, state: Tensor, params: list[Tensor],
    hidden_pre: Tensor, z1: Tensor, z2: Tensor, need_state_grad: bool, independent: bool = True,
) -> list[Tensor]:
    """CPU kernel of ``fastmarl::qmix_backward``: ``[dq, dstate, *dparams]``.

    Reads the residuals of :func:`qmix_forward_flat`. With ``a`` = ``hidden_pre``::

        d wf     = dy * ELU(a) * sgn(wf)          d a  = dy * |wf| * ELU'(a)
        d w1_i   = d a * q_i * sgn(w1_i)           d q_i = sum_e d a * |w1_i|
        d V.0(s) = dy * V.2 * [V.0(s) > 0]         d V.2 = sum_b dy * relu(V.0(s))

    then back through the second layers and their ReLU (two-layer hypernetworks), chunk by
    chunk of samples, and :func:`qmix_grads_from_dz` for the GEMMs that reduce over the batch.
    ``dstate`` is empty unless ``need_state_grad``. Gradients come back in their inputs' dtypes.
    """
    acc = z1.dtype
    dy = _to(grad_q_tot, acc).view(-1, 1)  # [B, 1]
    q = _to(chosen_action_value, acc)
    v2_w, _, *second = [_to(x, acc) for x in params[8:]]
    B, n = q.shape
    E = params[4].shape[0]
    hidden_pre = hidden_pre.view(B, E)
    rows = [params[0].shape[0], params[2].shape[0], E, E]
    # The gradients of z1 in two contiguous blocks: the first Linear's (hyper_w_1 or its first
    # layer) and the rest's (hyper_w_final ditto, hyper_b_1, V.0, then V.2's weight per sample);
    # z2's likewise. Writing the [c, n, E] tiles into a column slice of one [B, C1 + E] buffer
    # was 5x slower (0.85 against 0.16 ms at 10922 samples, n=3, E=32, on the CPU machine).
    dz_first, dz_rest = z1.new_empty(B, rows[0]), z1.new_empty(B, rows[1] + 3 * E)
    dz2_w1, dz2_wf = (z1.new_empty(B, n * E), z1.new_empty(B, E)) if second else (None, None)
    dq = z1.new_empty(B, n)
    chunks = _qmix_chunks(B, n, E)
    buffer = None if chunks[0] is None else z1.new_empty(2, chunks[0].stop, n, E)
    g = torch.relu(z1[:, :rows[0] + rows[1]]) if second else None  # [B, 2H]
    for chunk in chunks:
        dy_c, a = _rows(dy, chunk), _rows(hidden_pre, chunk)
        w1, wf, _, v_hidden = _rows(z1, chunk).split(rows, dim=1)
        d_z1_w1 = _rows(dz_first, chunk)
        d_z1_wf, d_a, d_v1, d_v2 = _rows(dz_rest, chunk).split([rows[1], E, E, E], dim=1)
        if second:
            w1, wf = _rows(z2, chunk).split([n * E, E], dim=1)
            d_w1, d_wf = _rows(dz2_w1, chunk), _rows(dz2_wf, chunk)
        else:
            d_w1, d_wf = d_z1_w1, d_z1_wf
        # y = sum_e ELU(a) |wf| + V(s)
        torch.mul(torch.nn.functional.elu(a).mul_(dy_c), wf.sgn(), out=d_wf)
        torch.ops.aten.elu_backward.grad_input(wf.abs().mul_(dy_c), 1.0, 1, 1, False, a, grad_input=d_a)
        # a = b1 + sum_i q_i |w1_i|. With t = sgn(w1) d_a, t * w1 is d_a |w1| exactly: one pass
        # fewer than abs and a batched matvec, 0.63 against 1.35 ms at 1024 samples, n=E=32.
        w1 = w1.view(-1, n, E)
        c = w1.shape[0]
        t = torch.sgn(w1, out=None if buffer is None else buffer[0, :c]).mul_(d_a.unsqueeze(1))
        torch.sum(torch.mul(t, w1, out=None if buffer is None else buffer[1, :c]), 2,
                  out=_rows(dq, chunk))
        torch.mul(t, _rows(q, chunk).unsqueeze(2), out=d_w1.view(-1, n, E))
        # V(s) = V.2 relu(V.0(s)) + c
        torch.ops.aten.threshold_backward.grad_input(dy_c * v2_w, v_hidden, 0, grad_input=d_v1)
        torch.clamp_min(v_hidden, 0, out=d_v2).mul_(dy_c)
        if second:
            h1, hf = _rows(g, chunk).split(rows[:2], dim=1)
            torch.mul(d_w1 @ second[0], h1 > 0, out=d_z1_w1)
            torch.mul(d_wf @ second[2], hf > 0, out=d_z1_wf)
    return qmix_grads_from_dz(grad_q_tot, dq, dz_first, dz_rest, dz2_w1, dz2_wf, g, chosen_action_value,
                              state, params, need_state_grad, independent)


def qmix_grads_from_dz(
    grad_q_tot: Tensor, dq: Tensor, dz_first: Tensor, dz_rest: Tensor, dz2_w1: Tensor | None,
    dz2_wf: Tensor | None, g: Tensor | None, chosen_action_value: Tensor, state: Tensor,
    params: list[Tensor], need_state_grad: bool, independent: bool = True,
) -> list[Tensor]:
    """``[dq, dstate, *dparams]`` from the per-sample gradients both backward kernels produce.

    ``dz_first`` ``[B, rows]`` holds the gradient of the first Linear's output (``hyper_w_1``
    or its first layer), ``dz_rest`` ``[B, rows + 3E]`` those of ``hyper_w_final`` (ditto),
    ``hyper_b_1`` and ``V.0``, then ``dy * relu(V.0(s))``; ``dz2_w1`` ``[B, nE]``, ``dz2_wf``
    ``[B, E]`` and ``g`` ``[B, 2H]`` (the ReLU activations that feed them) the second layers of
    two-layer hypernetworks. What is left are matmuls that reduce over the batch (``dZ^T @ x``)
    and ``dZ @ W`` for the state. ``independent`` copies the gradients that are slices of one
    result (an op's outputs may not alias one another; autograd does not mind).
    """
    acc = dz_first.dtype
    rows = [params[0].shape[0], params[2].shape[0], params[4].shape[0], params[6].shape[0]]
    E = rows[2]
    state_acc = _to(state, acc)

    def own(x):
        return x.clone() if independent else x

    def weight_grad(dz, x):
        # [k, S] = dz^T @ x. From B=128 on, (x^T @ dz)^T made contiguous is the faster way on
        # the CPU machine (MKL, one thread, 352 columns, S=37): 1.5 against 2.3 ms at B=4096,
        # 0.11 against 0.15 at B=256, but 34 against 26 us at B=32.
        if dz.shape[0] >= 128:
            return torch.mm(x.t(), dz).t().contiguous()
        return torch.mm(dz.t(), x)

    d_rest = weight_grad(dz_rest[:, :-E], state_acc).split(rows[1:])
    d_b_rest = dz_rest.sum(0).split([*rows[1:], E])
    # The first slice of each split result may stay a view: no other output aliases it.
    grads = [weight_grad(dz_first, state_acc), dz_first.sum(0), d_rest[0], d_b_rest[0],
             own(d_rest[1]), own(d_b_rest[1]), own(d_rest[2]), own(d_b_rest[2]),
             own(d_b_rest[3].view(1, E)), _to(grad_q_tot, acc).sum().view(1)]
    if len(params) == 14:
        H = rows[0]
        grads += [weight_grad(dz2_w1, g[:, :H]), dz2_w1.sum(0), weight_grad(dz2_wf, g[:, H:]), dz2_wf.sum(0)]
    d_state = None
    if need_state_grad:
        rest_weight = torch.cat([_to(params[i], acc) for i in (2, 4, 6)])
        d_state = torch.addmm(torch.mm(dz_rest[:, :-E], rest_weight), dz_first, _to(params[0], acc))
        d_state = _to(d_state, state.dtype)
    return [_to(dq, chosen_action_value.dtype), d_state, *(_to(d, x.dtype) for d, x in zip(grads, params))]
