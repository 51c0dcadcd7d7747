"""``torch.ops.fastmarl.qmix``: the QMIX mixer as a registered op with autograd, and its path policy.

Ops (``q`` ``[B, n]``, ``state`` ``[B, S]``, ``params`` a flattened
:class:`~fastmarl.ops.qmix.params.QMixParams`: 10 tensors for one-layer hypernetworks, 14 for two)::

    fastmarl::qmix(q, state, params, need_residual) -> (q_tot [B, 1], hidden_pre, z1, z2)
    fastmarl::qmix_backward(grad_q_tot, q, state, params, hidden_pre, z1, z2, need_state_grad)
        -> [dq, dstate, *dparams]

``hidden_pre``, ``z1`` and ``z2`` are residuals for the backward, empty when ``need_residual``
is False. What they hold depends on the device: the Triton kernel saves only ``hidden_pre``
``[B, E]`` and recomputes the hypernetwork outputs from the state; the torch kernel also keeps
those outputs (``z1``, ``z2``), since a CPU GEMM is too slow to run twice.

Both are ``triton_op``s: CUDA tensors go to the Triton launchers (:mod:`.triton`) when the
kernels take the mixer's width, everything else to the torch kernels (:mod:`.cpu`), registered
as opaque custom ops (``fastmarl::qmix_cpu``, ``fastmarl::qmix_backward_cpu``) so that
``torch.compile`` keeps their chunk loops and ``out=`` buffers as they are. The weight
gradients are torch matmuls on both devices (:mod:`.weight_grads`).

:func:`select_path` is the policy; :func:`mix` runs it.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.library import custom_op

from fastmarl.ops.dtypes import accumulate_dtype, cast, result_dtype, single_precision
from fastmarl.ops.paths import Path, forced_path
from fastmarl.ops.qmix import cpu
from fastmarl.ops.qmix.params import MODULE_PARAM_NAMES, QMixParams
from fastmarl.ops.qmix.weight_grads import weight_and_state_grads
from fastmarl.ops.triton_support import HAS_TRITON, on_triton_device, register_op

if HAS_TRITON:
    from fastmarl.ops.qmix import triton as launchers

__all__ = ["mix", "select_path", "SMALL_BATCH", "SMALL_FORWARD_WORK"]

# Below these sizes the eager CPU path is the composite one (see select_path): samples when
# autograd needs the backward, samples x agents x embedding for a forward without grad.
SMALL_BATCH = 256
SMALL_FORWARD_WORK = 1 << 20


def _kernel_covers(q: Tensor, params: QMixParams) -> bool:
    # Branches on device and sizes only, so it traces under torch.compile.
    return on_triton_device(q) and launchers.covers(params)


def select_path(q: Tensor, state: Tensor, params: QMixParams, need_residual: bool) -> Path:
    """How :func:`mix` runs.

    - ``Path.OP`` on CUDA (eager and compiled) when the kernels take the mixer's width: the
      Triton kernels.
    - ``Path.COMPOSITE`` under ``torch.compile`` elsewhere: TorchRL's op sequence
      (:func:`.cpu.qmix_composite`), traced, so that Inductor fuses it as it fuses TorchRL's
      ``QMixer``. The opaque op hides the elementwise work from Inductor: mixer
      forward+backward at B=4096, n=8, S=168 on the CPU machine took 11.2 ms through the op
      against 8.7 ms traced (TorchRL compiled: 8.9 ms). Half-precision or mixed-dtype inputs,
      which TorchRL's ops do not take, go through ``Path.OP`` (the CPU kernels, in float32).
    - ``Path.COMPOSITE`` eager below ``SMALL_BATCH`` samples (with grad) or ``SMALL_FORWARD_WORK``
      = B*n*E (without): a mixer call of 32 samples is ~25 small ops whichever way they are
      grouped, and plain autograd over them beats the fused torch kernels there (both cores of
      the CPU machine, E=32, n=3, S=48, min of 400: fwd+bwd 602 us against 656 fused, TorchRL's
      QMixer 600; forward without grad 120 against 144, TorchRL 153). The fused kernels win from
      256 samples on (n=8, S=168: 1251 against 1293 us; 512 samples, n=3: 1057 against 1101);
      without grad the composite wins up to B*n*E = 2^20 (4096 samples, n=3: 1.23 ms against
      1.65 fused, TorchRL 1.31; 65536 samples, n=8: fused 103 ms against 132, TorchRL 131).
    - ``Path.FUSED`` otherwise: the CPU kernels without the op boundary, in a
      ``torch.autograd.Function``. On the CPU machine an op with ``register_autograd`` and a
      list of tensors cost 129 us a forward with grad against 25 us (its arguments go through
      pytree on every call), and a MARL mixer call is ~150 us of work.
    """
    forced = forced_path("qmix")
    composite_ok = single_precision(q, state, params.hyper_w1_weight)
    if forced is not None:
        if forced is Path.COMPOSITE and not composite_ok:
            raise ValueError("force_path: the composite QMIX path takes float32 or float64 inputs of one dtype")
        return forced
    if _kernel_covers(q, params):
        return Path.OP
    if torch.compiler.is_compiling():
        return Path.COMPOSITE if composite_ok else Path.OP
    if composite_ok:
        if need_residual and q.shape[0] < SMALL_BATCH:
            return Path.COMPOSITE
        if not need_residual and q.shape[0] * q.shape[1] * params.embed < SMALL_FORWARD_WORK:
            return Path.COMPOSITE
    return Path.FUSED


def mix(q: Tensor, state: Tensor, params: QMixParams) -> Tensor:
    """``Q_tot`` ``[B, 1]`` of ``q`` ``[B, n]`` and ``state`` ``[B, S]`` by the path
    :func:`select_path` picks. Residuals for the backward are kept only when autograd will need
    them (not for a target network's call under ``no_grad`` or with frozen parameters)."""
    need_residual = torch.is_grad_enabled() and (
        q.requires_grad or state.requires_grad or any(p.requires_grad for p in params.flat())
    )
    path = select_path(q, state, params, need_residual)
    if path is Path.OP:
        return torch.ops.fastmarl.qmix(q, state, params.flat(), need_residual)[0]
    if path is Path.COMPOSITE:
        return cpu.qmix_composite(q, state, params)
    if not need_residual:
        return cpu.qmix_forward(q, state, params, False)[0]
    return _FusedQMix.apply(q, state, *params.flat())


class _FusedQMix(torch.autograd.Function):
    # Path.FUSED: the CPU kernels without the op boundary.

    @staticmethod
    def forward(ctx, q, state, *flat_params):
        params = QMixParams.from_flat(flat_params)
        q_tot, hidden_pre, z1, z2 = cpu.qmix_forward(q, state, params, True)
        # z2 is None for one-layer hypernetworks: save_for_backward takes None.
        ctx.save_for_backward(q, state, hidden_pre, z1, z2, *flat_params)
        return q_tot

    @staticmethod
    def backward(ctx, grad_q_tot):
        q, state, hidden_pre, z1, z2, *flat_params = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _differentiable_grads(grad_q_tot, q, state, flat_params, ctx.needs_input_grad)
        dq, d_state, *d_params = cpu.qmix_backward(
            grad_q_tot, q, state, QMixParams.from_flat(flat_params), hidden_pre, z1, z2,
            ctx.needs_input_grad[1], independent=False,
        )
        return dq, d_state, *d_params


def _differentiable_grads(grad_q_tot, q, state, flat_params, needs_input_grad):
    # backward(create_graph=True): the hand-written backward kernels have no derivative of their
    # own, so the forward is recomputed with the composite path (TorchRL's op sequence, in the
    # accumulation dtype) and autograd differentiates it: exact second derivatives, at the cost
    # of one more forward, paid only when a graph of the backward is asked for.
    inputs = [q, state, *flat_params]
    acc = accumulate_dtype(*(x.dtype for x in inputs))
    out = cpu.qmix_composite(cast(q, acc), cast(state, acc),
                             QMixParams.from_flat([cast(p, acc) for p in flat_params]))
    wanted = [x for x, need in zip(inputs, needs_input_grad) if need]
    grads = iter(torch.autograd.grad(out, wanted, cast(grad_q_tot, acc), create_graph=True))
    return tuple(cast(next(grads), x.dtype) if need else None for x, need in zip(inputs, needs_input_grad))


def _check(q: Tensor, state: Tensor, params: QMixParams) -> None:
    # fastmarl.modules.QMixer validates user input with full messages; this guards direct calls.
    S, E, H = params.state_dim, params.embed, params.hidden
    if q.ndim != 2 or state.ndim != 2 or state.shape[0] != q.shape[0] or state.shape[1] != S:
        raise ValueError(
            f"fastmarl::qmix: q has shape {tuple(q.shape)} and state {tuple(state.shape)}, expected "
            f"[B, n] and [B, S={S}]; use fastmarl.modules.QMixer to reshape [*B, n, 1] inputs"
        )
    n = q.shape[1]
    w1_rows, wf_rows = (H, H) if params.two_layer else (n * E, E)
    expected = [(w1_rows, S), (w1_rows,), (wf_rows, S), (wf_rows,), (E, S), (E,), (E, S), (E,), (1, E), (1,)]
    if params.two_layer:
        expected += [(n * E, H), (n * E,), (E, H), (E,)]
    names = MODULE_PARAM_NAMES[2 if params.two_layer else 1]
    for name, x, shape in zip(names, params.flat(), expected):
        if tuple(x.shape) != shape:
            raise ValueError(
                f"fastmarl::qmix: {name} has shape {tuple(x.shape)}, expected {shape} for n={n} "
                f"agents, state dim {S}, embed {E}"
            )


def _as_outputs(like: Tensor, tensors) -> list[Tensor]:
    # An op returns tensors, each its own: empty ones stand for the torch kernels' Nones.
    return [like.new_empty(0) if x is None else x for x in tensors]


@custom_op("fastmarl::qmix_cpu", mutates_args=())
def qmix_cpu(
    q: Tensor, state: Tensor, params: list[Tensor], need_residual: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return tuple(_as_outputs(q, cpu.qmix_forward(q, state, QMixParams.from_flat(params), need_residual)))


@qmix_cpu.register_fake
def _(q, state, params, need_residual):
    # The torch kernel's shapes and strides follow from its inputs' alone: run it on the fakes.
    return tuple(_as_outputs(q, cpu.qmix_forward(q, state, QMixParams.from_flat(params), need_residual)))


@custom_op("fastmarl::qmix_backward_cpu", mutates_args=())
def qmix_backward_cpu(
    grad_q_tot: Tensor, q: Tensor, state: Tensor, params: list[Tensor], hidden_pre: Tensor,
    z1: Tensor, z2: Tensor, need_state_grad: bool,
) -> list[Tensor]:
    return _as_outputs(q, cpu.qmix_backward(grad_q_tot, q, state, QMixParams.from_flat(params),
                                            hidden_pre, z1, z2, need_state_grad))


@qmix_backward_cpu.register_fake
def _(grad_q_tot, q, state, params, hidden_pre, z1, z2, need_state_grad):
    return _as_outputs(q, cpu.qmix_backward(grad_q_tot, q, state, QMixParams.from_flat(params),
                                            hidden_pre, z1, z2, need_state_grad))


@register_op("fastmarl::qmix")
def qmix_op(
    q: Tensor, state: Tensor, params: list[Tensor], need_residual: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    p = QMixParams.from_flat(params)
    _check(q, state, p)
    if not _kernel_covers(q, p):
        return torch.ops.fastmarl.qmix_cpu(q, state, params, need_residual)
    B = q.shape[0]
    acc = accumulate_dtype(q.dtype, state.dtype, p.hyper_w1_weight.dtype)
    q_tot = torch.empty(B, 1, dtype=result_dtype(q, state, p.hyper_w1_weight), device=q.device)
    hidden_pre = torch.empty(B if need_residual else 0, p.embed, dtype=acc, device=q.device)
    launchers.qmix_fwd(q, state, p, q_tot=q_tot, hidden_pre=hidden_pre if need_residual else None)
    empty = q.new_empty(0, dtype=acc)
    return q_tot, hidden_pre, empty, empty.clone()


@register_op("fastmarl::qmix_backward")
def qmix_backward_op(
    grad_q_tot: Tensor, q: Tensor, state: Tensor, params: list[Tensor], hidden_pre: Tensor,
    z1: Tensor, z2: Tensor, need_state_grad: bool,
) -> list[Tensor]:
    p = QMixParams.from_flat(params)
    _check(q, state, p)
    if not _kernel_covers(q, p):
        return torch.ops.fastmarl.qmix_backward_cpu(grad_q_tot, q, state, params, hidden_pre, z1,
                                                    z2, need_state_grad)
    B, n = q.shape
    E, H = p.embed, p.hidden
    acc, device = hidden_pre.dtype, q.device
    dq = torch.empty(B, n, dtype=acc, device=device)
    c1 = sum(w.shape[0] for w in p.state_weights)
    dz1 = torch.empty(B, c1 + E, dtype=acc, device=device)
    dz2 = torch.empty(B if p.two_layer else 0, n * E + E, dtype=acc, device=device)
    g = torch.empty(B if p.two_layer else 0, 2 * H, dtype=acc, device=device)
    launchers.qmix_bwd(grad_q_tot, q, state, p, hidden_pre, dq=dq, dz1=dz1, dz2=dz2, g=g)
    first = p.hyper_w1_weight.shape[0]
    return _as_outputs(q, weight_and_state_grads(
        grad_q_tot, dq, dz1[:, :first], dz1[:, first:], dz2[:, :n * E], dz2[:, n * E:], g, q, state,
        p, need_state_grad,
    ))


def _setup_context(ctx, inputs, output):
    q, state, params, need_residual = inputs
    _, hidden_pre, z1, z2 = output
    ctx.save_for_backward(q, state, hidden_pre, z1, z2, *params)
    ctx.need_residual = need_residual
    ctx.need_state_grad = state.requires_grad


def _backward(ctx, grad_q_tot, _grad_hidden_pre, _grad_z1, _grad_z2):
    q, state, hidden_pre, z1, z2, *params = ctx.saved_tensors
    if not ctx.need_residual:
        raise RuntimeError(
            "fastmarl::qmix was called with need_residual=False, so it kept nothing to "
            "differentiate; call fastmarl.functional.qmix_mixer, which sets it when autograd needs it"
        )
    if torch.is_grad_enabled():
        needs = ctx.needs_input_grad
        dq, d_state, *d_params = _differentiable_grads(
            grad_q_tot, q, state, params, (needs[0], needs[1], *needs[2]))
        return dq, d_state, d_params, None
    # Only q_tot is differentiable: the residuals are for this backward.
    dq, d_state, *d_params = torch.ops.fastmarl.qmix_backward(
        grad_q_tot, q, state, params, hidden_pre, z1, z2, ctx.need_state_grad
    )
    return dq, (d_state if ctx.need_state_grad else None), d_params, None


qmix_op.register_autograd(_backward, setup_context=_setup_context)
