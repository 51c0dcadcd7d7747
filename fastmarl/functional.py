"""fastmarl's functional API: one call per hot path, validated, reshaped, one op inside.

- :func:`generalized_advantage_estimate`: the multi-agent GAE scan (TorchRL's contract).
- :func:`ppo_clip_loss`: ``ClipPPOLoss``'s surrogate with advantage standardisation and its
  diagnostics, one ``torch.ops.fastmarl.ppo_clip`` call.
- :func:`ppo_critic_loss`: ``PPOLoss.loss_critic``'s distance, value clipping, coefficient,
  reduction and explained variance, one ``torch.ops.fastmarl.ppo_critic`` call.
- :func:`qmix_mixer`: the QMIX hypernetwork mixer (``q [B, n]``, ``state [B, S]``, the mixer's
  tensors) -> ``Q_tot [B, 1]``, ``torch.ops.fastmarl.qmix`` on CUDA (see
  :func:`fastmarl.ops.qmix.mix` for the CPU paths).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import torch
from torch import Tensor

import fastmarl.ops  # noqa: F401  (registers torch.ops.fastmarl)
from fastmarl import reference
from fastmarl.ops.qmix import mix as qmix_mixer

__all__ = ["generalized_advantage_estimate", "ppo_clip_loss", "ppo_critic_loss", "qmix_mixer"]

# --------------------------------------------------------------------------- GAE

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


# --------------------------------------------------------------------------- PPO


# Below these many elements the eager path off CUDA runs the reference math (TorchRL's op
# sequence) rather than the fused torch kernels: at MARL minibatch sizes on a CPU every op
# costs ~5-10 us whatever its size, and the fused kernels' residual for a one-multiply backward
# is more ops than autograd records. Both cores of the CPU machine, fwd+bwd, min of 3x100:
# ppo_clip at 400x3 474 us reference against 488 fused, 4096x3 939 against 826, 65536x8 14.3
# against 11.1 ms; ppo_critic (clip_value, smooth_l1) at 400x3 347 against 448 us, 4096x3 728
# against 844, 65536x8 12.8 against 11.8 ms.
EAGER_FUSED_MIN_ELEMENTS = {"ppo_clip": 1 << 13, "ppo_critic": 1 << 16}


def _path(op: str, *tensors: Tensor) -> str:
    """How the PPO functionals run: ``op`` (the Triton kernels, CUDA), ``reference`` (under
    ``torch.compile`` off CUDA, where Inductor fuses the reference math, and for small eager
    calls, see ``EAGER_FUSED_MIN_ELEMENTS``), or ``eager`` (the fused torch kernels).

    Off the kernel path the op's boundary is pure cost: on the CPU machine the two ops'
    dispatch (``triton_op``, custom op, autograd) made the loss math at 400x3 2.5 ms against
    TorchRL's 1.6 ms, and compiled it ran 3.6x slower than TorchRL's math under Inductor. So the
    eager path runs the same torch kernels in an autograd.Function, without the boundary, and
    a backward that is one multiply by the residual saved in the forward. Half-precision or
    mixed-dtype inputs keep the fused kernels, which accumulate in float32.
    """
    from fastmarl.ops.ppo import _kernel_path, _out_dtype

    if tensors[0].is_cuda and _kernel_path(tensors[0].reshape(tensors[0].shape[0], -1), _out_dtype(*tensors)):
        return "op"
    if torch.compiler.is_compiling():
        return "reference"
    dtype = tensors[0].dtype
    single_precision = dtype in (torch.float32, torch.float64) and all(t.dtype == dtype for t in tensors)
    if single_precision and tensors[0].numel() < EAGER_FUSED_MIN_ELEMENTS[op]:
        return "reference"
    return "eager"


class _PPOClip(torch.autograd.Function):
    # The eager path of ppo_clip_loss off CUDA: fastmarl::ppo_clip's torch kernel, no boundary.

    @staticmethod
    def forward(ctx, log_prob, prev_log_prob, advantage, clip_low, clip_high, groups, normalize, reduction):
        *out, d_gain = reference.ppo_clip_forward_2d(
            log_prob, prev_log_prob, advantage, clip_low, clip_high, groups, normalize, reduction, residual=True
        )
        ctx.save_for_backward(d_gain)
        ctx.reduction = reduction
        ctx.mark_non_differentiable(*out[1:6])
        return tuple(out[:6])

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        (d_gain,) = ctx.saved_tensors
        scale = 1.0 / d_gain.numel() if ctx.reduction == "mean" else 1.0
        return -(grad_loss * scale) * d_gain, None, None, None, None, None, None, None


class _PPOCritic(torch.autograd.Function):
    # The eager path of ppo_critic_loss off CUDA: fastmarl::ppo_critic's torch kernel, no boundary.

    @staticmethod
    def forward(ctx, value, target, old_value, clip_value, coeff, loss_type, reduction):
        loss, clip_fraction, ev, d_loss = reference.ppo_critic_forward_2d(
            value, target, old_value, clip_value, coeff, loss_type, reduction, residual=True
        )
        ctx.save_for_backward(d_loss)
        ctx.reduction = reduction
        ctx.mark_non_differentiable(clip_fraction, ev)
        return loss, clip_fraction, ev

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        (d_loss,) = ctx.saved_tensors
        scale = 1.0 / d_loss.numel() if ctx.reduction == "mean" else 1.0
        return (grad_loss * scale) * d_loss, None, None, None, None, None, None


def _check_float(name: str, x, device=None) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if device is not None and x.device != device:
        raise ValueError(f"{name} is on {x.device} but the log-prob is on {device}: all inputs must share one device")


def _as_scalar_tensor(name: str, x, like: Tensor) -> Tensor:
    if isinstance(x, Tensor):
        if x.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(x.shape)}")
        return x.reshape(())
    return torch.tensor(float(x), dtype=torch.float32, device=like.device)


def _check_reduction(reduction: str) -> None:
    if reduction not in reference.PPO_REDUCTIONS:
        raise ValueError(f"reduction must be one of {list(reference.PPO_REDUCTIONS)}, got {reduction!r}")


_FLOAT_BOUNDS: dict = {}


def clip_bounds(clip_epsilon, like: Tensor) -> tuple[Tensor, Tensor]:
    """TorchRL's log-space bounds ``(log1p(-ε_low), log1p(ε_high))`` of a float, tensor or pair.

    Bounds of Python floats are computed once per device and reused (read-only): making and
    transforming two scalar tensors was 12 us of a 300 us loss call at 400x3 on the CPU machine.
    """
    if isinstance(clip_epsilon, (tuple, list)):
        low, high = clip_epsilon
    else:
        low = high = clip_epsilon
    key = None
    if isinstance(low, (int, float)) and isinstance(high, (int, float)) and not torch.compiler.is_compiling():
        key = (float(low), float(high), like.device)
        cached = _FLOAT_BOUNDS.get(key)
        if cached is not None:
            return cached
    # Normal tensors even under inference_mode, so that a cached bound can be saved for a
    # backward later.
    with torch.inference_mode(False):
        low, high = _as_scalar_tensor("clip_epsilon", low, like), _as_scalar_tensor("clip_epsilon", high, like)
        bounds = (-low).log1p(), high.log1p()
    if key is not None and len(_FLOAT_BOUNDS) < 64:
        _FLOAT_BOUNDS[key] = bounds
    return bounds


def ppo_clip_loss(
    log_prob: Tensor,
    prev_log_prob: Tensor,
    advantage: Tensor,
    *,
    clip_epsilon: float | Tensor | tuple[float, float] = 0.2,
    normalize_advantage: bool = False,
    normalize_advantage_exclude_dims: Sequence[int] = (),
    reduction: str = "mean",
) -> dict[str, Tensor]:
    """``ClipPPOLoss``'s clipped surrogate and diagnostics in one op call.

    Args:
        log_prob: log π_θ(a|s) of the current policy, ``[*S]`` (e.g. ``[N, A]``).
        prev_log_prob: the behaviour policy's log-prob, ``[*S]``.
        advantage: ``[*S, 1]``.
        clip_epsilon: ε, or ``(ε_low, ε_high)`` for asymmetric clipping; the ratio is clamped
            in log space to ``[log1p(-ε_low), log1p(ε_high)]`` as TorchRL does.
        normalize_advantage: standardise the advantage first, with TorchRL's
            ``_standardize`` (mean and unbiased std clamped at 1e-6) over every dim but
            ``normalize_advantage_exclude_dims``: ``(-2,)`` is per agent (``MAPPOLoss``).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        TorchRL's entries: ``loss_objective`` (reduced; ``[*S]`` for ``"none"``),
        ``clip_fraction``, ``kl_approx``, ``ESS`` (``[*S[1:]]``: over dim 0, divided by the
        batch), ``max_ratio``, ``mean_ratio``.

    The gradient reaches ``log_prob``. An advantage or bound that requires grad sends the call
    to the differentiable :func:`fastmarl.reference.ppo_clip_reference`.
    """
    low, high = clip_bounds(clip_epsilon, log_prob)
    return _ppo_clip(log_prob, prev_log_prob, advantage, low, high, normalize_advantage,
                     tuple(normalize_advantage_exclude_dims), reduction)


def _ppo_clip(log_prob, prev_log_prob, advantage, clip_low, clip_high, normalize, exclude_dims, reduction):
    _check_float("log_prob", log_prob)
    _check_float("prev_log_prob", prev_log_prob, log_prob.device)
    _check_float("advantage", advantage, log_prob.device)
    _check_reduction(reduction)
    shape = log_prob.shape
    if log_prob.ndim == 0:
        raise ValueError("log_prob is 0-dim; expected [*S] with a batch dim first (e.g. [N, A])")
    if prev_log_prob.shape != shape:
        raise ValueError(f"prev_log_prob has shape {tuple(prev_log_prob.shape)}, expected log_prob's [*S] = {tuple(shape)}")
    if advantage.shape != (*shape, 1):
        raise ValueError(
            f"advantage has shape {tuple(advantage.shape)}, expected [*S, 1] = {(*shape, 1)} "
            f"for a log-prob of shape [*S] = {tuple(shape)}"
        )
    if log_prob.numel() == 0:
        raise ValueError(f"log_prob of shape {tuple(shape)} is empty: the PPO loss needs at least one sample")
    exclude = {d % advantage.ndim for d in exclude_dims}
    if normalize and advantage.ndim - 2 in exclude and advantage.ndim < 3:
        raise ValueError(
            f"normalize_advantage_exclude_dims={exclude_dims} excludes the agent dim (-2 of "
            f"[*B, A, 1]), but advantage of shape {tuple(advantage.shape)} has no agent dim"
        )
    if any(x.requires_grad for x in (advantage, prev_log_prob, clip_low, clip_high)):
        return reference.ppo_clip_reference(
            log_prob, prev_log_prob, advantage, clip_low, clip_high, normalize=normalize,
            exclude_dims=exclude_dims, reduction=reduction,
        )
    normalize = normalize and advantage.numel() > 1
    if not normalize or not exclude:
        groups = 1
    elif exclude == {advantage.ndim - 2}:
        groups = advantage.shape[-2]
    else:
        # Other exclusions: TorchRL's standardisation in torch, then the op without it.
        advantage = reference.standardize_advantage_reference(advantage, exclude_dims)
        normalize, groups = False, 1
    path = _path("ppo_clip", log_prob, prev_log_prob, advantage)
    if path == "reference":
        return reference.ppo_clip_reference(
            log_prob, prev_log_prob, advantage, clip_low, clip_high, normalize=normalize,
            exclude_dims=exclude_dims, reduction=reduction,
        )
    N = shape[0]
    M = math.prod(shape[1:])
    args = (log_prob.reshape(N, M), prev_log_prob.reshape(N, M), advantage.reshape(N, M),
            clip_low.reshape(()), clip_high.reshape(()), groups, normalize, reduction)
    if path == "op":
        loss, clip_fraction, kl, ess, max_ratio, mean_ratio, _, _ = torch.ops.fastmarl.ppo_clip(*args)
    else:
        loss, clip_fraction, kl, ess, max_ratio, mean_ratio = _PPOClip.apply(*args)
    return {
        "loss_objective": loss.reshape(shape) if reduction == "none" else loss,
        "clip_fraction": clip_fraction,
        "kl_approx": kl,
        "ESS": ess.reshape(shape[1:]),
        "max_ratio": max_ratio,
        "mean_ratio": mean_ratio,
    }


def ppo_critic_loss(
    value: Tensor,
    target: Tensor,
    *,
    old_value: Tensor | None = None,
    clip_value: float | Tensor | None = None,
    coeff: float | Tensor | None = None,
    loss_critic_type: str = "smooth_l1",
    reduction: str = "mean",
    explained_variance: bool = True,
) -> dict[str, Tensor]:
    """``PPOLoss.loss_critic`` after the value network, in one op call.

    Args:
        value: the critic's prediction ``[*S, 1]`` (after any ``ValueNorm``).
        target: the value target, same shape.
        old_value: the values stored with the data, needed for ``clip_value``.
        clip_value: clip ``value - old_value`` to ``±clip_value`` and keep the worse loss.
        coeff: ``critic_coeff``, multiplied before the reduction.
        loss_critic_type: ``"l1"``, ``"l2"`` or ``"smooth_l1"``.

    Returns:
        ``loss_critic`` (reduced; ``[*S]`` for ``"none"``), ``value_clip_fraction`` when
        clipping, and ``explained_variance`` (``1 - Var(t - v) / (Var(t) + eps)`` over dim 0,
        shape ``[*S[1:], 1]``) when asked for.
    """
    _check_float("value", value)
    _check_float("target", target, value.device)
    _check_reduction(reduction)
    if loss_critic_type not in reference.CRITIC_LOSS_TYPES:
        raise ValueError(f"loss_critic_type must be one of {list(reference.CRITIC_LOSS_TYPES)}, got {loss_critic_type!r}")
    if value.ndim == 0 or value.numel() == 0:
        raise ValueError(f"value of shape {tuple(value.shape)} must have a batch dim and at least one sample")
    if target.shape != value.shape:
        raise ValueError(f"target has shape {tuple(target.shape)}, expected value's {tuple(value.shape)}")
    if clip_value is not None:
        if old_value is None:
            raise ValueError("clip_value needs old_value (the values stored with the data)")
        _check_float("old_value", old_value, value.device)
        if old_value.shape != value.shape:
            raise ValueError(f"old_value has shape {tuple(old_value.shape)}, expected value's {tuple(value.shape)}")
        clip_value = _as_scalar_tensor("clip_value", clip_value, value)
    else:
        old_value = None
    if coeff is not None:
        coeff = _as_scalar_tensor("coeff", coeff, value)
    if any(x is not None and x.requires_grad for x in (target, old_value, clip_value, coeff)):
        return reference.ppo_critic_reference(
            target, value, old_value, clip_value, coeff, loss_type=loss_critic_type,
            reduction=reduction, explained_variance=explained_variance,
        )
    path = _path("ppo_critic", *(x for x in (value, target, old_value) if x is not None))
    if path == "reference":
        return reference.ppo_critic_reference(
            target, value, old_value, clip_value, coeff, loss_type=loss_critic_type,
            reduction=reduction, explained_variance=explained_variance,
        )
    shape = value.shape
    N, M = shape[0], math.prod(shape[1:])

    def flat(x):
        return None if x is None else x.reshape(N, M)

    args = (flat(value), flat(target), flat(old_value), clip_value, coeff, loss_critic_type, reduction)
    if path == "op":
        loss, clip_fraction, ev = torch.ops.fastmarl.ppo_critic(*args, explained_variance)
    else:
        loss, clip_fraction, ev = _PPOCritic.apply(*args)
    out = {}
    if clip_value is not None:
        out["value_clip_fraction"] = clip_fraction
    if explained_variance:
        out["explained_variance"] = ev.reshape(shape[1:])
    out["loss_critic"] = loss.reshape(shape).squeeze(-1) if reduction == "none" else loss
    return out
