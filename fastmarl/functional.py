"""fastmarl's functional API: one call per hot path, validated, then one call into its op folder.

- :func:`generalized_advantage_estimate`: the multi-agent GAE scan (TorchRL's contract).
- :func:`ppo_clip_loss` (and :func:`ppo_clip_loss_with_bounds`): ``ClipPPOLoss``'s surrogate with
  advantage standardisation and its diagnostics.
- :func:`ppo_critic_loss`: ``PPOLoss.loss_critic``'s distance, value clipping, coefficient,
  reduction and explained variance.
- :func:`qmix_mixer`: the QMIX hypernetwork mixer.

Each validates its arguments (errors name the argument and the expected shape or range) and
hands them to ``fastmarl.ops.<op>``, whose ``select_path`` decides what runs: the registered op
(Triton on CUDA), fused torch kernels, or plain torch that ``torch.compile`` fuses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import torch
from torch import Tensor

from fastmarl.ops import gae as gae_ops
from fastmarl.ops import ppo as ppo_ops
from fastmarl.ops import qmix as qmix_ops
from fastmarl.ops.dtypes import FLAG_DTYPES, FLOAT_DTYPES
from fastmarl.ops.ppo.spec import CRITIC_LOSS_TYPES, REDUCTIONS
from fastmarl.ops.qmix.params import QMixParams

__all__ = [
    "generalized_advantage_estimate", "ppo_clip_loss", "ppo_clip_loss_with_bounds",
    "ppo_critic_loss", "qmix_mixer", "clip_bounds", "check_process_group",
]

# --------------------------------------------------------------------------- GAE


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


def _check_gae_inputs(gamma, lmbda, state_value, next_state_value, reward, done, terminated,
                      time_dim, check_discount_values):
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
        if named[name].dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{name} must be float16, bfloat16, float32 or float64, got {named[name].dtype}"
            )
    for name in ("done", "terminated"):
        if named[name].dtype not in FLAG_DTYPES:
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
    check_discount_range: bool = True,
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
        check_discount_range: check that tensor γ/λ lie in [0, 1] (on the CPU only: elsewhere
            it would cost a device sync). fastmarl's estimators pass False: they check their
            γ/λ buffers once, at construction.

    Returns:
        ``(advantage, value_target)`` of ``state_value``'s shape, in the promoted dtype of the
        value, next value and reward; accumulated in float32 (float64 for float64 inputs).

    Gradients flow to ``state_value``, ``next_state_value`` and ``reward`` through the op's
    backward scan (see :func:`fastmarl.ops.gae.select_path` for what runs where). If ``gamma`` or
    ``lmbda`` is a tensor that requires grad, it gets gradients too.
    NaN and inf propagate exactly as in TorchRL (``0 * NaN`` is NaN): inputs are not scanned
    for them, which would cost a device sync.
    """
    if terminated is None:
        terminated = done
    time_dim = _check_gae_inputs(gamma, lmbda, state_value, next_state_value, reward, done,
                                 terminated, time_dim, check_discount_range)
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
    advantage, value_target = gae_ops.gae(
        as_rtf(state_value), as_rtf(next_state_value), as_rtf(reward), as_rtf(done),
        as_rtf(terminated), gamma_scalar, lmbda_scalar, gamma_tensor, lmbda_tensor,
    )
    return advantage.view(shape), value_target.view(shape)


# --------------------------------------------------------------------------- PPO


def _check_float(name: str, x, device=None) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if device is not None and x.device != device:
        raise ValueError(f"{name} is on {x.device} but the log-prob is on {device}: all inputs must share one device")


def _as_scalar_tensor(name: str, x, like: Tensor) -> Tensor:
    if isinstance(x, Tensor):
        if x.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a float or a floating-point tensor, got dtype {x.dtype}")
        return x.reshape(())
    if isinstance(x, bool) or not isinstance(x, Real):
        raise TypeError(f"{name} must be a float or a one-element tensor, got {type(x).__name__}")
    # A Python float is exact for float64 inputs (0.2 rounded to float32 clipped float64 values
    # at 0.20000000298), float32 otherwise, as TorchRL's buffers are.
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    return torch.tensor(float(x), dtype=dtype, device=like.device)


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {list(REDUCTIONS)}, got {reduction!r}")


def _check_clip_epsilon(low, high) -> None:
    # ε_low in [0, 1) keeps log1p(-ε_low) finite; ε_high >= 0 keeps the clip range non-empty.
    # Tensors are read only on the CPU (elsewhere it would cost a sync) and outside compile.
    def values(x):
        if isinstance(x, Tensor):
            if x.device.type != "cpu" or torch.compiler.is_compiling():
                return None
            return float(x.detach().reshape(-1)[0]) if x.numel() == 1 else None
        if isinstance(x, bool) or not isinstance(x, Real):
            raise TypeError(f"clip_epsilon must be a float, a scalar tensor or a pair of them, got {type(x).__name__}")
        return float(x)

    lo, hi = values(low), values(high)
    if lo is not None and not 0.0 <= lo < 1.0:
        raise ValueError(f"clip_epsilon (low) must lie in [0, 1), got {lo}")
    if hi is not None and not hi >= 0.0:
        raise ValueError(f"clip_epsilon (high) must be >= 0, got {hi}")


_FLOAT_BOUNDS: dict = {}


def clip_bounds(clip_epsilon, like: Tensor) -> tuple[Tensor, Tensor]:
    """TorchRL's log-space bounds ``(log1p(-ε_low), log1p(ε_high))`` of a float, tensor or pair.

    Bounds of Python floats are float64 for a float64 ``like`` (exact), float32 otherwise (as
    TorchRL's buffers), computed once per device and reused (read-only): making and transforming
    two scalar tensors was 12 us of a 300 us loss call at 400x3 on the CPU machine.
    """
    if isinstance(clip_epsilon, (tuple, list)):
        if len(clip_epsilon) != 2:
            raise ValueError(f"clip_epsilon must be a float or a pair (low, high), got {clip_epsilon!r}")
        low, high = clip_epsilon
    else:
        low = high = clip_epsilon
    _check_clip_epsilon(low, high)
    key = None
    if isinstance(low, (int, float)) and isinstance(high, (int, float)) and not torch.compiler.is_compiling():
        key = (float(low), float(high), like.device, like.dtype == torch.float64)
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
    process_group=None,
) -> dict[str, Tensor]:
    """``ClipPPOLoss``'s clipped surrogate and diagnostics in one op call.

    Args:
        log_prob: log π_θ(a|s) of the current policy, ``[*S]`` (e.g. ``[N, A]``).
        prev_log_prob: the behaviour policy's log-prob, ``[*S]``.
        advantage: ``[*S, 1]``.
        clip_epsilon: ε in [0, 1), or ``(ε_low, ε_high)`` for asymmetric clipping; the ratio is
            clamped in log space to ``[log1p(-ε_low), log1p(ε_high)]`` as TorchRL does.
        normalize_advantage: standardise the advantage first, with TorchRL's
            ``_standardize`` (mean and unbiased std clamped at 1e-6) over every dim but
            ``normalize_advantage_exclude_dims``: ``(-2,)`` is per agent (``MAPPOLoss``);
            excluding every dim leaves the advantage as it is.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        process_group: a ``torch.distributed.ProcessGroup`` (e.g. ``torch.distributed.group.WORLD``)
            whose ranks each hold a shard of the minibatch: with ``normalize_advantage``, the
            mean and unbiased std (per agent, with the exclusion above) are those of every
            rank's advantage together, merged exactly from per-rank (count, mean, M2) partials
            gathered by one all-gather (see :mod:`fastmarl.ops.ppo.collective`; traced by
            ``torch.compile``, gloo and NCCL, no host sync, differentiable). Every rank of the
            group must make the call. ``None`` (default) or a one-rank group: this rank's
            statistics, as TorchRL.

    Returns:
        TorchRL's entries: ``loss_objective`` (reduced; ``[*S]`` for ``"none"``),
        ``clip_fraction``, ``kl_approx``, ``ESS`` (``[*S[1:]]``: over dim 0, divided by the
        batch), ``max_ratio``, ``mean_ratio``.

    The gradient reaches ``log_prob``, and ``prev_log_prob``, ``advantage`` or a tensor ε too
    when they require grad. Half-precision inputs are computed in float32.
    """
    _check_float("log_prob", log_prob)
    low, high = clip_bounds(clip_epsilon, log_prob)  # validates ε
    return _clip_loss(log_prob, prev_log_prob, advantage, low, high, normalize_advantage,
                      normalize_advantage_exclude_dims, reduction, process_group)


def ppo_clip_loss_with_bounds(
    log_prob: Tensor,
    prev_log_prob: Tensor,
    advantage: Tensor,
    clip_low: Tensor,
    clip_high: Tensor,
    *,
    normalize_advantage: bool = False,
    normalize_advantage_exclude_dims: Sequence[int] = (),
    reduction: str = "mean",
    process_group=None,
) -> dict[str, Tensor]:
    """:func:`ppo_clip_loss` with the log-space bounds given as tensors (``log1p(-ε_low)``,
    ``log1p(ε_high)``), as a ``ClipPPOLoss`` keeps them.

    The bounds must be those of ``ε_low`` in [0, 1) and ``ε_high >= 0``: ``clip_low`` in
    ``(-inf, 0]``, ``clip_high >= 0``. They are checked where reading them is free (CPU tensors,
    outside ``torch.compile``): a ``ClipPPOLoss`` built with, or annealed to, ``ε = 1.5`` has a
    NaN bound, with which TorchRL returns a NaN loss.
    """
    _check_log_clip_bounds(clip_low, clip_high)
    return _clip_loss(log_prob, prev_log_prob, advantage, clip_low, clip_high, normalize_advantage,
                      normalize_advantage_exclude_dims, reduction, process_group)


def _check_log_clip_bounds(clip_low, clip_high) -> None:
    for name, x in (("clip_low", clip_low), ("clip_high", clip_high)):
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.numel() != 1:
            got = f"shape {tuple(x.shape)}, dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
            raise TypeError(f"{name} must be a one-element floating-point tensor (a log-space clip bound), got {got}")
    if clip_low.device.type != "cpu" or clip_high.device.type != "cpu" or torch.compiler.is_compiling():
        return
    low, high = float(clip_low), float(clip_high)
    # NaN fails both tests: log1p of ε_low > 1 or ε_high < -1.
    if not -math.inf < low <= 0.0:
        eps = "> 1" if math.isnan(low) else f"= {-math.expm1(low):g}"
        raise ValueError(f"clip_low = log1p(-ε_low) must lie in (-inf, 0] (clip_epsilon (low) in [0, 1)), "
                         f"got {low} (clip_epsilon (low) {eps})")
    if not high >= 0.0:
        eps = "< -1" if math.isnan(high) else f"= {math.expm1(high):g}"
        raise ValueError(f"clip_high = log1p(ε_high) must be >= 0 (clip_epsilon (high) >= 0), "
                         f"got {high} (clip_epsilon (high) {eps})")


def _clip_loss(log_prob, prev_log_prob, advantage, clip_low, clip_high, normalize_advantage,
               normalize_advantage_exclude_dims, reduction, process_group) -> dict[str, Tensor]:
    check_process_group(process_group)
    _check_float("log_prob", log_prob)
    _check_float("prev_log_prob", prev_log_prob, log_prob.device)
    _check_float("advantage", advantage, log_prob.device)
    _check_reduction(reduction)
    shape = log_prob.shape
    if log_prob.ndim == 0:
        raise ValueError("log_prob is 0-dim; expected [*S] with a batch dim first (e.g. [N, A])")
    if prev_log_prob.shape != shape:
        raise ValueError(f"prev_log_prob has shape {tuple(prev_log_prob.shape)}, expected log_prob's [*S] = {tuple(shape)}")
    if advantage.shape == shape:
        raise ValueError(
            f"advantage has shape {tuple(advantage.shape)}, expected [*S, 1] = {(*shape, 1)} for a "
            f"log-prob of shape [*S] = {tuple(shape)}: it lacks its trailing value dim (use "
            "advantage.unsqueeze(-1)); broadcast against the [*S, 1] log-weights it would turn the "
            "objective into an outer product over samples"
        )
    if advantage.shape != (*shape, 1):
        raise ValueError(
            f"advantage has shape {tuple(advantage.shape)}, expected [*S, 1] = {(*shape, 1)} "
            f"for a log-prob of shape [*S] = {tuple(shape)}"
        )
    if log_prob.numel() == 0:
        raise ValueError(f"log_prob of shape {tuple(shape)} is empty: the PPO loss needs at least one sample")
    exclude = _exclude_dims(normalize_advantage_exclude_dims, advantage)
    if normalize_advantage and advantage.ndim - 2 in exclude and advantage.ndim < 3 and len(exclude) < advantage.ndim:
        raise ValueError(
            f"normalize_advantage_exclude_dims={tuple(normalize_advantage_exclude_dims)} excludes the "
            f"agent dim (-2 of [*B, A, 1]), but advantage of shape {tuple(advantage.shape)} has no agent dim"
        )
    return ppo_ops.ppo_clip(log_prob, prev_log_prob, advantage, clip_low.reshape(()), clip_high.reshape(()),
                            normalize=normalize_advantage, exclude_dims=exclude, reduction=reduction,
                            process_group=process_group)


def check_process_group(process_group) -> None:
    """``process_group`` is ``None`` or a ``torch.distributed.ProcessGroup`` of an initialised
    default group (skipped while ``torch.compile`` traces: checked on the eager calls)."""
    if process_group is None or torch.compiler.is_compiling():
        return
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("process_group was given, but this torch build has no torch.distributed")
    if not isinstance(process_group, dist.ProcessGroup):
        raise TypeError(f"process_group must be a torch.distributed.ProcessGroup (e.g. torch.distributed.group.WORLD) "
                        f"or None, got {type(process_group).__name__}")
    if not dist.is_initialized():
        raise RuntimeError("process_group was given, but torch.distributed is not initialised: call "
                           "torch.distributed.init_process_group first (torchrun sets up its environment)")


def _exclude_dims(dims: Sequence[int], advantage: Tensor) -> frozenset[int]:
    # TorchRL's _standardize rules: each dim in [-ndim, ndim), none repeated.
    ndim = advantage.ndim
    if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence):
        raise TypeError(
            f"normalize_advantage_exclude_dims must be a sequence of ints (e.g. (-2,)), got "
            f"{type(dims).__name__} {dims!r}"
        )
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, int) or not -ndim <= d < ndim:
            raise ValueError(
                f"normalize_advantage_exclude_dims={tuple(dims)}: {d!r} is not a dim of the "
                f"advantage of shape {tuple(advantage.shape)} (expected integers in [{-ndim}, {ndim}))"
            )
    exclude = frozenset(d % ndim for d in dims)
    if len(exclude) != len(dims):
        raise ValueError(
            f"normalize_advantage_exclude_dims={tuple(dims)} names a dim twice for an advantage "
            f"of shape {tuple(advantage.shape)}"
        )
    return exclude


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
    if loss_critic_type not in CRITIC_LOSS_TYPES:
        raise ValueError(f"loss_critic_type must be one of {list(CRITIC_LOSS_TYPES)}, got {loss_critic_type!r}")
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
        # TorchRL clamps value - old_value to [-c, c]: a negative c makes that range empty and
        # every value "clipped" to -c. Read where it is free (CPU, outside compile).
        if (clip_value.device.type == "cpu" and not torch.compiler.is_compiling()
                and not float(clip_value) >= 0.0):
            raise ValueError(f"clip_value must be >= 0 (the value-clipping range ±clip_value), got {float(clip_value)}")
    else:
        old_value = None
    if coeff is not None:
        coeff = _as_scalar_tensor("coeff", coeff, value)
    return ppo_ops.ppo_critic(value, target, old_value, clip_value, coeff, loss_type=loss_critic_type,
                              reduction=reduction, explained_variance=explained_variance)


# --------------------------------------------------------------------------- QMIX


def qmix_mixer(q: Tensor, state: Tensor, params: QMixParams | Sequence[Tensor]) -> Tensor:
    """``Q_tot`` ``[B, 1]`` of the agents' chosen Q-values ``q`` ``[B, n]`` and the state
    ``state`` ``[B, S]`` through the QMIX mixer whose tensors are ``params`` (a
    :class:`~fastmarl.ops.qmix.params.QMixParams`, or its 10 or 14 tensors in that order).

    :class:`fastmarl.modules.QMixer` is the module around it (``[*B, n, 1]`` inputs, parameter
    names, TorchRL's state_dict). Gradients reach ``q``, ``state`` and every parameter.
    """
    if not isinstance(params, QMixParams):
        if isinstance(params, Tensor) or not isinstance(params, Sequence):
            raise TypeError(
                f"params must be a QMixParams or a sequence of its 10 or 14 tensors, got {type(params).__name__}"
            )
        if len(params) not in (10, 14):
            raise ValueError(
                f"params must hold 10 tensors (one-layer hypernetworks) or 14 (two-layer), got {len(params)}"
            )
        params = QMixParams.from_flat(list(params))
    for name, x in (("q", q), ("state", state)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if q.ndim != 2 or q.shape[0] == 0:
        raise ValueError(f"q has shape {tuple(q.shape)}, expected a non-empty [B, n]")
    _check_qmix_params(params, q.shape[1])
    S = params.state_dim
    if tuple(state.shape) != (q.shape[0], S):
        raise ValueError(f"state has shape {tuple(state.shape)}, expected [B, S] = {(q.shape[0], S)}")
    for name, x in zip(("state", *qmix_ops.MODULE_PARAM_NAMES[2 if params.two_layer else 1]),
                       (state, *params.flat())):
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}: all inputs must share one device")
    return qmix_ops.mix(q, state, params)


def _check_qmix_params(params: QMixParams, n: int) -> None:
    # Shapes from hyper_b_1's [E, S] (and hyper_w_1's first [H, S] for two layers), dtypes,
    # presence: a wrong one fails here with its name instead of inside a matmul.
    two_layer = params.two_layer
    required = QMixParams._fields[:14 if two_layer else 10]
    for name in required:
        x = getattr(params, name)
        if not isinstance(x, Tensor):
            raise TypeError(f"params.{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"params.{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if params.hyper_b1_weight.ndim != 2:
        raise ValueError(f"params.hyper_b1_weight has shape {tuple(params.hyper_b1_weight.shape)}, expected [E, S]")
    E, S = params.hyper_b1_weight.shape
    H = params.hyper_w1_weight.shape[0] if two_layer else 0
    first_w1, first_wf = (H, H) if two_layer else (n * E, E)
    expected = {
        "hyper_w1_weight": (first_w1, S), "hyper_w1_bias": (first_w1,),
        "hyper_wf_weight": (first_wf, S), "hyper_wf_bias": (first_wf,),
        "hyper_b1_weight": (E, S), "hyper_b1_bias": (E,), "v1_weight": (E, S), "v1_bias": (E,),
        "v2_weight": (1, E), "v2_bias": (1,),
    }
    if two_layer:
        expected.update(hyper_w1_out_weight=(n * E, H), hyper_w1_out_bias=(n * E,),
                        hyper_wf_out_weight=(E, H), hyper_wf_out_bias=(E,))
    for name, shape in expected.items():
        got = tuple(getattr(params, name).shape)
        if got != shape:
            raise ValueError(
                f"params.{name} has shape {got}, expected {shape} for q's n={n} agents, state dim "
                f"S={S} and mixing width E={E} (from params.hyper_b1_weight [E, S])"
                + (f", hypernetwork width H={H}" if two_layer else "")
            )
