"""``torch.ops.fastmarl.ppo_clip`` and ``torch.ops.fastmarl.ppo_critic``: registration, autograd,
and the path policy of PPO's losses.

Ops (operands ``[N, M]``, see :mod:`fastmarl.ops.ppo.cpu`)::

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
``loss`` is ``[N, M]`` for ``reduction="none"`` and 0-dim otherwise; ``adv_mean``/``adv_std``
(0 and 1 without normalisation) are outputs so that the backward reuses them. The surrogate's
gradient reaches ``log_prob`` only and the critic's ``value`` only.

The ops are ``triton_op``s: CUDA tensors the kernels cover go to the Triton launchers
(:mod:`.triton`), everything else to the torch kernels (:mod:`.cpu`), computed in float32
(float64 for float64 inputs). :func:`select_path` is the policy; :func:`ppo_clip` and
:func:`ppo_critic` run it on ``[*S]`` inputs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fastmarl.ops.dtypes import accumulate_dtype, cast, result_dtype, single_precision
from fastmarl.ops.paths import Path, forced_path
from fastmarl.ops.ppo import collective, cpu
from fastmarl.ops.ppo.spec import CRITIC_LOSS_TYPES, REDUCTIONS
from fastmarl.ops.triton_support import HAS_TRITON, on_triton_device, register_op

if HAS_TRITON:
    from fastmarl.ops.ppo import triton as launchers

__all__ = ["ppo_clip", "ppo_critic", "select_path", "EAGER_FUSED_MIN_ELEMENTS"]

# Below these many elements the eager path off CUDA is the composite one rather than the fused
# kernels: at MARL minibatch sizes on a CPU every op costs ~5-10 us whatever its size, and the
# residual that makes the fused backward one multiply is more ops than autograd records. Both
# cores of the CPU machine, fwd+bwd, min of 3x100 (composite = TorchRL's op sequence then):
# ppo_clip at 400x3 474 us composite against 488 fused, 4096x3 939 against 826, 65536x8 14.3
# against 11.1 ms; ppo_critic (clip_value, smooth_l1) at 400x3 347 against 448 us, 4096x3 728
# against 844, 65536x8 12.8 against 11.8 ms.
EAGER_FUSED_MIN_ELEMENTS = {"ppo_clip": 1 << 13, "ppo_critic": 1 << 16}


def select_path(op: str, operands: tuple[Tensor, ...], needs_composite_grad: bool) -> Path:
    """How :func:`ppo_clip` (``op="ppo_clip"``) or :func:`ppo_critic` (``"ppo_critic"``) runs.

    ``operands`` are the ``[N, M]`` tensors the op reads; ``needs_composite_grad`` is whether an
    input other than the log-prob (value) requires grad, which only the composite path
    differentiates.

    - ``Path.COMPOSITE`` when ``needs_composite_grad``.
    - ``Path.OP`` for CUDA tensors the Triton kernels cover (not float64, at most
      ``MAX_COLUMNS`` columns), eager and compiled.
    - ``Path.COMPOSITE`` under ``torch.compile`` elsewhere, where Inductor fuses the torch
      kernels' ops; and for eager single-precision calls below ``EAGER_FUSED_MIN_ELEMENTS``.
    - ``Path.FUSED`` otherwise: the torch kernels in an autograd.Function, without the op
      boundary. On the CPU machine the op's dispatch (``triton_op``, autograd) cost 330 us a
      fwd+bwd at 400x3 against 360 us for the whole fused computation. Half-precision and
      mixed-dtype inputs take it at every size (computed in float32).
    """
    forced = forced_path(op)
    if forced is not None:
        return forced
    if needs_composite_grad:
        return Path.COMPOSITE
    x = operands[0]
    dtype = result_dtype(*operands)
    if on_triton_device(x) and launchers.covers(x.shape[1], dtype):
        return Path.OP
    if torch.compiler.is_compiling():
        return Path.COMPOSITE
    if single_precision(*operands) and x.numel() < EAGER_FUSED_MIN_ELEMENTS[op]:
        return Path.COMPOSITE
    return Path.FUSED


def _check_args(name: str, reduction: str, shape, **tensors) -> None:
    # The functionals validate user input with full messages; this guards direct op calls.
    if reduction not in REDUCTIONS:
        raise ValueError(f"fastmarl::{name}: reduction must be one of {list(REDUCTIONS)}, got {reduction!r}")
    for arg, x in tensors.items():
        if x is not None and tuple(x.shape) != tuple(shape):
            raise ValueError(f"fastmarl::{name}: {arg} has shape {tuple(x.shape)}, expected [N, M] = {tuple(shape)}")


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return accumulate_dtype(dtype)


# --------------------------------------------------------------------------- the surrogate


def _clip_forward_cpu(log_prob, prev_log_prob, advantage, clip_low, clip_high, num_groups,
                      normalize, reduction, residual=False):
    # cpu.ppo_clip_forward in the accumulation dtype, results in the op's dtypes.
    dtype = result_dtype(log_prob, prev_log_prob, advantage)
    acc = accumulate_dtype(dtype)
    out = cpu.ppo_clip_forward(
        cast(log_prob, acc), cast(prev_log_prob, acc), cast(advantage, acc), clip_low, clip_high,
        num_groups, normalize, reduction, residual=residual,
    )
    return (*(cast(x, dtype) for x in out[:6]), *out[6:])


def _clip_meta(log_prob, prev_log_prob, advantage, num_groups, reduction):
    # The forward's outputs, allocated (the Triton path writes into them).
    N, M = log_prob.shape
    dtype = result_dtype(log_prob, prev_log_prob, advantage)
    stats = _stats_dtype(dtype)

    def new(*shape, dt=dtype):
        return log_prob.new_empty(shape, dtype=dt)

    loss = new(N, M) if reduction == "none" else new()
    return loss, new(), new(), new(M), new(), new(), new(num_groups, dt=stats), new(num_groups, dt=stats)


@register_op("fastmarl::ppo_clip")
def ppo_clip_op(
    log_prob: Tensor, prev_log_prob: Tensor, advantage: Tensor, clip_low: Tensor,
    clip_high: Tensor, num_groups: int, normalize: bool, reduction: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    _check_args("ppo_clip", reduction, log_prob.shape, prev_log_prob=prev_log_prob, advantage=advantage)
    dtype = result_dtype(log_prob, prev_log_prob, advantage)
    if not (on_triton_device(log_prob) and launchers.covers(log_prob.shape[1], dtype)):
        return _clip_forward_cpu(log_prob, prev_log_prob, advantage, clip_low, clip_high,
                                 num_groups, normalize, reduction)
    loss, clip_fraction, kl, ess, max_ratio, mean_ratio, adv_mean, adv_std = out = _clip_meta(
        log_prob, prev_log_prob, advantage, num_groups, reduction)
    launchers.ppo_clip_fwd(
        log_prob, prev_log_prob, advantage, clip_low, clip_high, num_groups, normalize, reduction,
        loss=loss, clip_fraction=clip_fraction, kl_approx=kl, ess=ess, max_ratio=max_ratio,
        mean_ratio=mean_ratio, adv_mean=adv_mean, adv_std=adv_std,
    )
    return out


@register_op("fastmarl::ppo_clip_backward")
def ppo_clip_backward_op(
    grad_loss: Tensor, log_prob: Tensor, prev_log_prob: Tensor, advantage: Tensor,
    clip_low: Tensor, clip_high: Tensor, adv_mean: Tensor, adv_std: Tensor, num_groups: int,
    reduction: str,
) -> Tensor:
    dtype = result_dtype(log_prob, prev_log_prob, advantage)
    if not (on_triton_device(log_prob) and launchers.covers(log_prob.shape[1], dtype)):
        return _clip_backward_torch(grad_loss, log_prob, prev_log_prob, advantage, clip_low,
                                    clip_high, adv_mean, adv_std, num_groups, reduction)
    grad = torch.empty(log_prob.shape, dtype=log_prob.dtype, device=log_prob.device)
    launchers.ppo_clip_bwd(grad_loss, log_prob, prev_log_prob, advantage, clip_low, clip_high,
                           adv_mean, adv_std, num_groups, reduction, grad_log_prob=grad)
    return grad


def _clip_setup(ctx, inputs, output):
    log_prob, prev_log_prob, advantage, clip_low, clip_high, num_groups, normalize, reduction = inputs
    ctx.mark_non_differentiable(*output[1:])
    ctx.save_for_backward(log_prob, prev_log_prob, advantage, clip_low, clip_high, output[6], output[7])
    ctx.num_groups, ctx.reduction = num_groups, reduction


def _clip_backward(ctx, grad_loss, *unused_grads):
    # Only the loss is differentiable (TorchRL computes the side outputs without grad).
    log_prob, prev_log_prob, advantage, clip_low, clip_high, adv_mean, adv_std = ctx.saved_tensors
    if torch.is_grad_enabled():
        # backward(create_graph=True): the same formula in torch ops, which autograd
        # differentiates again (the backward kernels have no derivative of their own).
        grad = _clip_backward_torch(grad_loss, log_prob, prev_log_prob, advantage, clip_low,
                                    clip_high, adv_mean, adv_std, ctx.num_groups, ctx.reduction)
    else:
        grad = torch.ops.fastmarl.ppo_clip_backward(
            grad_loss, log_prob, prev_log_prob, advantage, clip_low, clip_high, adv_mean, adv_std,
            ctx.num_groups, ctx.reduction,
        )
    return grad, None, None, None, None, None, None, None


def _clip_backward_torch(grad_loss, log_prob, prev_log_prob, advantage, clip_low, clip_high,
                         adv_mean, adv_std, num_groups, reduction):
    # cpu.ppo_clip_backward in the accumulation dtype (any device: plain torch ops).
    acc = accumulate_dtype(result_dtype(log_prob, prev_log_prob, advantage))
    grad = cpu.ppo_clip_backward(
        cast(grad_loss, acc), cast(log_prob, acc), cast(prev_log_prob, acc), cast(advantage, acc),
        clip_low, clip_high, adv_mean, adv_std, num_groups, reduction)
    return cast(grad, log_prob.dtype)


ppo_clip_op.register_autograd(_clip_backward, setup_context=_clip_setup)


class _FusedClip(torch.autograd.Function):
    # Path.FUSED: the CPU kernels without the op boundary; the backward is one multiply by the
    # residual d gain / d log-weight saved in the forward (or, when a graph of the backward is
    # asked for, cpu.ppo_clip_backward, which autograd differentiates again).

    @staticmethod
    def forward(ctx, log_prob, prev_log_prob, advantage, clip_low, clip_high, groups, normalize, reduction):
        *out, d_gain = _clip_forward_cpu(log_prob, prev_log_prob, advantage, clip_low, clip_high,
                                         groups, normalize, reduction, residual=True)
        ctx.save_for_backward(d_gain, log_prob, prev_log_prob, advantage, clip_low, clip_high, out[6], out[7])
        ctx.groups, ctx.reduction = groups, reduction
        ctx.mark_non_differentiable(*out[1:6])
        return tuple(out[:6])

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        d_gain, log_prob, prev_log_prob, advantage, clip_low, clip_high, adv_mean, adv_std = ctx.saved_tensors
        if torch.is_grad_enabled():  # backward(create_graph=True): stay differentiable
            grad = _clip_backward_torch(grad_loss, log_prob, prev_log_prob, advantage, clip_low,
                                        clip_high, adv_mean, adv_std, ctx.groups, ctx.reduction)
        else:
            # In the residual's (accumulation) dtype: a bf16 grad_loss * 1/N rounded in bf16
            # first was up to 1.6 bf16 half-ulps off the float64 gradient.
            scale = 1.0 / d_gain.numel() if ctx.reduction == "mean" else 1.0
            # grad_loss in the residual's float32 first: a float16 grad_loss / N is subnormal
            # from N ~ 10^4 on, and rounding it there cost float16 gradients ~0.3% (fastmarl check).
            grad = cast(-(cast(grad_loss, d_gain.dtype) * scale) * d_gain, log_prob.dtype)
        return grad, None, None, None, None, None, None, None


def ppo_clip(
    log_prob: Tensor, prev_log_prob: Tensor, advantage: Tensor, clip_low: Tensor,
    clip_high: Tensor, *, normalize: bool, exclude_dims: frozenset[int], reduction: str,
    process_group=None,
) -> dict[str, Tensor]:
    """The surrogate's entries for ``log_prob``/``prev_log_prob`` ``[*S]`` and ``advantage``
    ``[*S, 1]`` (validated; ``exclude_dims`` normalised to ``0 <= d < advantage.ndim``), by the
    path :func:`select_path` picks. Keys as :func:`fastmarl.functional.ppo_clip_loss`.

    With a ``process_group`` of more than one rank, the standardisation uses every rank's
    statistics: :func:`fastmarl.ops.ppo.collective.standardize_across` (torch ops and one
    all-gather, on any device) standardises the advantage, then the path runs with
    ``normalize=False``."""
    shape = log_prob.shape
    if normalize and process_group is not None and process_group.size() > 1:
        advantage = collective.standardize_across(advantage, tuple(sorted(exclude_dims)), process_group)
        normalize = False
    normalize = normalize and advantage.numel() > 1
    groups = 1
    out_dtype = result_dtype(log_prob, prev_log_prob, advantage)
    if normalize and exclude_dims:
        if exclude_dims == {advantage.ndim - 2}:
            groups = advantage.shape[-2]  # per agent: the kernels' column groups
        else:
            # Any other exclusion: TorchRL's standardisation first, then no normalisation; in the
            # accumulation dtype, as the kernels standardise (in bf16 it was 5% off the float64
            # loss at N=7), the results cast back to the inputs' dtype below.
            advantage = cpu.standardize_advantage(cast(advantage, accumulate_dtype(out_dtype)),
                                                  tuple(sorted(exclude_dims)))
            normalize = False
    N, M = shape[0], math.prod(shape[1:])
    args = (log_prob.reshape(N, M), prev_log_prob.reshape(N, M), advantage.reshape(N, M),
            clip_low, clip_high, groups, normalize, reduction)
    path = select_path("ppo_clip", args[:3], any(
        x.requires_grad for x in (prev_log_prob, advantage, clip_low, clip_high)))
    if path is Path.OP:
        loss, clip_fraction, kl, ess, max_ratio, mean_ratio, _, _ = torch.ops.fastmarl.ppo_clip(*args)
    elif path is Path.FUSED:
        loss, clip_fraction, kl, ess, max_ratio, mean_ratio = _FusedClip.apply(*args)
    else:
        loss, *diagnostics = _clip_forward_cpu(*args)[:6]
        clip_fraction, kl, ess, max_ratio, mean_ratio = (x.detach() for x in diagnostics)
    out = {
        "loss_objective": loss.reshape(shape) if reduction == "none" else loss,
        "clip_fraction": clip_fraction,
        "kl_approx": kl,
        "ESS": ess.reshape(shape[1:]),
        "max_ratio": max_ratio,
        "mean_ratio": mean_ratio,
    }
    return {key: cast(x, out_dtype) for key, x in out.items()}


# --------------------------------------------------------------------------- the critic


def _critic_forward_cpu(value, target, old_value, clip_value, coeff, loss_type, reduction, residual=False):
    dtype = result_dtype(value, target)
    acc = accumulate_dtype(dtype, *(x.dtype for x in (old_value, clip_value, coeff) if x is not None))
    # eps of the explained variance from the input dtype, not the accumulation one: TorchRL's
    # (and the Triton kernel's) for half inputs.
    out = cpu.ppo_critic_forward(
        cast(value, acc), cast(target, acc), None if old_value is None else cast(old_value, acc),
        clip_value, coeff, loss_type, reduction, residual=residual, eps=torch.finfo(target.dtype).eps,
    )
    return (*(cast(x, dtype) for x in out[:3]), *out[3:])


def _critic_meta(value, target, reduction):
    N, M = value.shape
    dtype = result_dtype(value, target)
    loss = value.new_empty((N, M) if reduction == "none" else (), dtype=dtype)
    return loss, value.new_empty((), dtype=dtype), value.new_empty((M,), dtype=dtype)


@register_op("fastmarl::ppo_critic")
def ppo_critic_op(
    value: Tensor, target: Tensor, old_value: Tensor | None, clip_value: Tensor | None,
    coeff: Tensor | None, loss_type: str, reduction: str, explained_variance: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    _check_args("ppo_critic", reduction, value.shape, target=target, old_value=old_value)
    if loss_type not in CRITIC_LOSS_TYPES:
        raise ValueError(f"fastmarl::ppo_critic: loss_type must be one of {list(CRITIC_LOSS_TYPES)}, got {loss_type!r}")
    if clip_value is not None and old_value is None:
        raise ValueError("fastmarl::ppo_critic: clip_value needs old_value")
    if not (on_triton_device(value) and launchers.covers(value.shape[1], result_dtype(value, target))):
        return _critic_forward_cpu(value, target, old_value, clip_value, coeff, loss_type, reduction)
    loss, clip_fraction, ev = out = _critic_meta(value, target, reduction)
    launchers.ppo_critic_fwd(value, target, old_value, clip_value, coeff, loss_type, reduction,
                             explained_variance, loss=loss, clip_fraction=clip_fraction, ev=ev)
    return out


@register_op("fastmarl::ppo_critic_backward")
def ppo_critic_backward_op(
    grad_loss: Tensor, value: Tensor, target: Tensor, old_value: Tensor | None,
    clip_value: Tensor | None, coeff: Tensor | None, loss_type: str, reduction: str,
) -> Tensor:
    if not (on_triton_device(value) and launchers.covers(value.shape[1], result_dtype(value, target))):
        return _critic_backward_torch(grad_loss, value, target, old_value, clip_value, coeff,
                                      loss_type, reduction)
    grad = torch.empty(value.shape, dtype=value.dtype, device=value.device)
    launchers.ppo_critic_bwd(grad_loss, value, target, old_value, clip_value, coeff, loss_type,
                             reduction, grad_value=grad)
    return grad


def _critic_setup(ctx, inputs, output):
    value, target, old_value, clip_value, coeff, loss_type, reduction, explained_variance = inputs
    ctx.mark_non_differentiable(*output[1:])
    ctx.save_for_backward(value, target, old_value, clip_value, coeff)
    ctx.loss_type, ctx.reduction = loss_type, reduction


def _critic_backward(ctx, grad_loss, *unused_grads):
    value, target, old_value, clip_value, coeff = ctx.saved_tensors
    if torch.is_grad_enabled():  # backward(create_graph=True): torch ops autograd can differentiate
        grad = _critic_backward_torch(grad_loss, value, target, old_value, clip_value, coeff,
                                      ctx.loss_type, ctx.reduction)
    else:
        grad = torch.ops.fastmarl.ppo_critic_backward(
            grad_loss, value, target, old_value, clip_value, coeff, ctx.loss_type, ctx.reduction
        )
    return grad, None, None, None, None, None, None, None


def _critic_backward_torch(grad_loss, value, target, old_value, clip_value, coeff, loss_type, reduction):
    # cpu.ppo_critic_backward in the accumulation dtype (any device: plain torch ops).
    acc = accumulate_dtype(result_dtype(value, target))
    grad = cpu.ppo_critic_backward(
        cast(grad_loss, acc), cast(value, acc), cast(target, acc),
        None if old_value is None else cast(old_value, acc), clip_value, coeff, loss_type, reduction)
    return cast(grad, value.dtype)


ppo_critic_op.register_autograd(_critic_backward, setup_context=_critic_setup)


class _FusedCritic(torch.autograd.Function):
    # Path.FUSED of the critic: the backward is one multiply by d loss / d value saved in the
    # forward (or cpu.ppo_critic_backward when a graph of the backward is asked for).

    @staticmethod
    def forward(ctx, value, target, old_value, clip_value, coeff, loss_type, reduction):
        loss, clip_fraction, ev, d_loss = _critic_forward_cpu(
            value, target, old_value, clip_value, coeff, loss_type, reduction, residual=True)
        ctx.save_for_backward(d_loss, value, target, old_value, clip_value, coeff)
        ctx.loss_type, ctx.reduction = loss_type, reduction
        ctx.mark_non_differentiable(clip_fraction, ev)
        return loss, clip_fraction, ev

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        d_loss, value, target, old_value, clip_value, coeff = ctx.saved_tensors
        if torch.is_grad_enabled():  # backward(create_graph=True): stay differentiable
            grad = _critic_backward_torch(grad_loss, value, target, old_value, clip_value, coeff,
                                          ctx.loss_type, ctx.reduction)
        else:
            scale = 1.0 / d_loss.numel() if ctx.reduction == "mean" else 1.0
            grad = cast((cast(grad_loss, d_loss.dtype) * scale) * d_loss, value.dtype)  # see _FusedClip
        return grad, None, None, None, None, None, None


def ppo_critic(
    value: Tensor, target: Tensor, old_value: Tensor | None, clip_value: Tensor | None,
    coeff: Tensor | None, *, loss_type: str, reduction: str, explained_variance: bool,
) -> dict[str, Tensor]:
    """The critic's entries for ``value``/``target``/``old_value`` ``[*S, 1]`` (validated;
    ``old_value`` None unless clipping), by the path :func:`select_path` picks. Keys as
    :func:`fastmarl.functional.ppo_critic_loss`."""
    shape = value.shape
    N, M = shape[0], math.prod(shape[1:])

    def flat(x):
        return None if x is None else x.reshape(N, M)

    args = (flat(value), flat(target), flat(old_value), clip_value, coeff, loss_type, reduction)
    path = select_path("ppo_critic", tuple(x for x in args[:3] if x is not None), any(
        x is not None and x.requires_grad for x in (target, old_value, clip_value, coeff)))
    if path is Path.OP:
        loss, clip_fraction, ev = torch.ops.fastmarl.ppo_critic(*args, explained_variance)
    elif path is Path.FUSED:
        loss, clip_fraction, ev = _FusedCritic.apply(*args)
    else:
        loss, clip_fraction, ev = _critic_forward_cpu(*args)
    out = {}
    if clip_value is not None:
        out["value_clip_fraction"] = clip_fraction
    if explained_variance:
        out["explained_variance"] = ev.reshape(shape[1:])
    out["loss_critic"] = loss.reshape(shape).squeeze(-1) if reduction == "none" else loss
    return out
