"""``torch.ops.fastmarl.qmix``: the QMIX hypernetwork mixer as a ``torch.library`` op with autograd.

Ops (``q`` ``[B, n]``, ``state`` ``[B, S]``, ``params`` the mixer's tensors in
:data:`fastmarl.reference.QMIX_PARAM_NAMES` order: 10 for one-layer hypernetworks, 14 for two)::

    fastmarl::qmix(q, state, params, need_residual) -> (q_tot [B, 1], hidden_pre, z1, z2)
    fastmarl::qmix_backward(grad_q_tot, q, state, params, hidden_pre, z1, z2, need_state_grad)
        -> [dq, dstate, *dparams]

``hidden_pre``, ``z1`` and ``z2`` are residuals for the backward, empty when ``need_residual``
is False. What they hold depends on the path: the Triton kernel saves only ``hidden_pre``
``[B, E]`` and recomputes the hypernetwork outputs from the state; the torch kernel also keeps
those outputs (``z1``, ``z2``), since a CPU GEMM is too slow to run twice. ``grad_q_tot`` is
``[B, 1]`` like ``q_tot``.

Both ops are ``triton_op``s whose host function sends CUDA tensors to the Triton launchers below
and everything else (and mixers wider than :func:`~fastmarl.kernels.qmix.qmix_kernel_fits`) to
the torch kernels of :mod:`fastmarl.reference`, registered as opaque custom ops
(``fastmarl::qmix_torch``, ``fastmarl::qmix_backward_torch``). The weight gradients are torch
matmuls on both paths (:func:`fastmarl.reference.qmix_grads_from_dz`): cuBLAS on CUDA.

:func:`mix` is what :class:`fastmarl.modules.QMixer` calls: ``fastmarl::qmix`` on CUDA; on the
CPU, the same torch kernels without the op boundary in eager mode, and TorchRL's math traced
under ``torch.compile`` (measured reasons in its docstring).

Running the Triton kernels on CPU tensors: set ``TRITON_INTERPRET=1`` before Triton is imported
and call :func:`qmix_fwd_triton` / :func:`qmix_bwd_triton` directly (``tests/test_qmix_triton.py``
does this in CI); the op itself always sends CPU tensors to the torch kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.library import custom_op, triton_op, wrap_triton

from fastmarl import reference
from fastmarl.ops._triton import HAS_TRITON, use_triton

if HAS_TRITON:
    from fastmarl.kernels.qmix import (
        NUM_WARPS,
        qmix_block_sizes,
        qmix_bwd_kernel,
        qmix_fwd_kernel,
        qmix_grid,
        qmix_kernel_fits,
    )

__all__ = ["mix", "qmix_fwd_triton", "qmix_bwd_triton"]

# Below these sizes the CPU eager path runs TorchRL's math (see mix()): samples when autograd
# needs the backward, samples x agents x embedding for a forward without grad.
_SMALL_BATCH = 256
_SMALL_FORWARD_WORK = 1 << 20


def mix(chosen_action_value: Tensor, state: Tensor, params: list[Tensor]) -> Tensor:
    """``Q_tot`` ``[B, 1]`` of ``q`` ``[B, n]`` and ``state`` ``[B, S]``.

    - CUDA (eager and compiled): one ``fastmarl::qmix`` call, the Triton kernels.
    - Elsewhere, eager, from ``_SMALL_BATCH`` samples on: the torch kernels of :mod:`fastmarl.reference` in a
      ``torch.autograd.Function``, not through the op: on the CPU machine an op with
      ``register_autograd`` and a list of tensors costs 129 us a forward with grad against 25 us
      (its arguments go through pytree on every call), and a MARL mixer call is ~150 us of work.
    - Elsewhere, under ``torch.compile``: TorchRL's math (``reference.qmix_reference``), traced,
      so that Inductor fuses it as it fuses TorchRL's ``QMixer``. The opaque op hides the
      elementwise work from Inductor: mixer forward+backward at B=4096, n=8, S=168 on the CPU
      machine took 11.2 ms through the op against 8.7 ms traced (TorchRL compiled: 8.9 ms).
      Half-precision or mixed-dtype inputs, which TorchRL's math does not take, go through the op.
    - Elsewhere, below ``_SMALL_BATCH`` samples: the same math in eager mode. A mixer call
      of 32 samples is ~25 small ops whichever way they are grouped; plain autograd over
      functional calls beats the fused torch kernels there (both cores of the CPU machine, E=32,
      n=3, S=48, min of 400: fwd+bwd 602 us against 656 fused, TorchRL's QMixer 600; forward
      without grad 120 against 144, TorchRL 153). The fused kernels win from 256 samples on
      (n=8, S=168: 1251 against 1293 us; 512 samples, n=3: 1057 against 1101). Without grad
      the traced math wins for longer, up to ``_SMALL_FORWARD_WORK`` = B*n*E of 2^20 (4096
      samples, n=3: 1.23 ms against 1.65 fused, TorchRL 1.31; at n=8 even, 4.3 against 4.5;
      65536 samples, n=8: fused 103 ms against 132 traced, TorchRL 131).

    Residuals for the backward are kept only when autograd will need them (not for the target
    network's call under ``no_grad`` or with frozen parameters).
    """
    need_residual = torch.is_grad_enabled() and (
        chosen_action_value.requires_grad or state.requires_grad
        or any(p.requires_grad for p in params)
    )
    if _use_kernel(chosen_action_value, params):
        return torch.ops.fastmarl.qmix(chosen_action_value, state, params, need_residual)[0]
    if _single_precision(chosen_action_value, state, params) and (
        torch.compiler.is_compiling() or _small(chosen_action_value, params, need_residual)
    ):
        return reference.qmix_reference(chosen_action_value.unsqueeze(-1), state, params)
    if torch.compiler.is_compiling():
        # Mixed or half precision: TorchRL's math would not take it; the op accumulates in fp32.
        return torch.ops.fastmarl.qmix(chosen_action_value, state, params, need_residual)[0]
    if not need_residual:
        return reference.qmix_forward_flat(chosen_action_value, state, params, False)[0]
    return _QMixFunction.apply(chosen_action_value, state, *params)


def _small(q: Tensor, params: list[Tensor], need_residual: bool) -> bool:
    if need_residual:
        return q.shape[0] < _SMALL_BATCH
    return q.shape[0] * q.shape[1] * params[4].shape[0] < _SMALL_FORWARD_WORK


def _single_precision(q: Tensor, state: Tensor, params: list[Tensor]) -> bool:
    # TorchRL's math takes one dtype throughout; half-precision or mixed inputs keep the fused
    # kernels, which accumulate in float32 where TorchRL's ops would round every intermediate.
    dtype = q.dtype
    return dtype in (torch.float32, torch.float64) and state.dtype == dtype and params[0].dtype == dtype


class _QMixFunction(torch.autograd.Function):
    # The eager CPU path of mix(): fastmarl::qmix_torch's functions without its op boundary.

    @staticmethod
    def forward(ctx, chosen_action_value, state, *params):
        q_tot, hidden_pre, z1, z2 = reference.qmix_forward_flat(chosen_action_value, state,
                                                                list(params), True)
        # z2 is None for one-layer hypernetworks: save_for_backward takes None.
        ctx.save_for_backward(chosen_action_value, state, hidden_pre, z1, z2, *params)
        return q_tot

    @staticmethod
    def backward(ctx, grad_q_tot):
        q, state, hidden_pre, z1, z2, *params = ctx.saved_tensors
        need_state_grad = ctx.needs_input_grad[1]
        dq, d_state, *d_params = reference.qmix_backward_flat(
            grad_q_tot, q, state, params, hidden_pre, z1, z2, need_state_grad, independent=False
        )
        return dq, (d_state if need_state_grad else None), *d_params


def _sizes(q: Tensor, params: list[Tensor]) -> tuple[int, int, int, int, int, bool]:
    # (B, S, n, E, H, two-layer), read off hyper_b_1 [E, S]; H is 0 for one-layer hypernetworks.
    two_layer = len(params) == 14
    return (q.shape[0], params[4].shape[1], q.shape[1], params[4].shape[0],
            params[0].shape[0] if two_layer else 0, two_layer)


def _check(q: Tensor, state: Tensor, params: list[Tensor]) -> None:
    # fastmarl.modules.QMixer validates user input with full messages; this guards direct calls.
    if len(params) not in (10, 14):
        raise ValueError(f"fastmarl::qmix: expected 10 or 14 parameter tensors, got {len(params)}")
    B, S, n, E, H, two_layer = _sizes(q, params)
    w1_rows, wf_rows = (H, H) if two_layer else (n * E, E)
    expected = [(w1_rows, S), (w1_rows,), (wf_rows, S), (wf_rows,), (E, S), (E,), (E, S), (E,),
                (1, E), (1,)]
    if two_layer:
        expected += [(n * E, H), (n * E,), (E, H), (E,)]
    for i, (x, shape) in enumerate(zip(params, expected)):
        if tuple(x.shape) != shape:
            raise ValueError(
                f"fastmarl::qmix: {reference.QMIX_PARAM_NAMES[2 if two_layer else 1][i]} has shape "
                f"{tuple(x.shape)}, expected {shape} for n={n} agents, state dim {S}, embed {E}"
            )
    if q.ndim != 2 or tuple(state.shape) != (B, S):
        raise ValueError(
            f"fastmarl::qmix: q has shape {tuple(q.shape)} and state {tuple(state.shape)}, expected "
            f"[B, n] and [B, S={S}]; use fastmarl.modules.QMixer to reshape [*B, n, 1] inputs"
        )


def _use_kernel(q: Tensor, params: list[Tensor]) -> bool:
    # Branches on device and sizes only, so it traces under torch.compile.
    if not use_triton(q):
        return False
    _, _, _, E, H, _ = _sizes(q, params)
    return qmix_kernel_fits(E, H)


def _launch_args(q: Tensor, state: Tensor, params: list[Tensor], block_b: int | None):
    B, S, n, E, H, two_layer = _sizes(q, params)
    params = [p.contiguous() for p in params]
    if not two_layer:
        # Any pointer will do for the second layers the kernel never reads.
        params = params + params[:4]
    block_b_default, block_k, block_e, block_h = qmix_block_sizes(S, E, H)
    block_b = block_b or block_b_default
    sizes = dict(BB=block_b, BK=block_k, BE=block_e, BH=block_h, TWO_LAYER=two_layer)
    return params, (B, S, n, E, H), qmix_grid(B, block_b), sizes


# --------------------------------------------------------------------------- Triton launchers


def qmix_fwd_triton(
    q: Tensor, state: Tensor, params: list[Tensor], q_tot: Tensor, hidden_pre: Tensor | None,
    block_b: int | None = None,
) -> None:
    """Launch :func:`~fastmarl.kernels.qmix.qmix_fwd_kernel` into ``q_tot`` ``[B, 1]`` and, unless
    None, ``hidden_pre`` ``[B, E]`` (both contiguous). ``block_b`` overrides the samples per
    program (tests use 16 to cross blocks at small B)."""
    params, dims, grid, sizes = _launch_args(q, state, params, block_b)
    acc_fp64 = torch.float64 in (q.dtype, state.dtype, params[0].dtype)
    wrap_triton(qmix_fwd_kernel)[grid](
        q, state, *params,
        q_tot, q_tot if hidden_pre is None else hidden_pre,
        *dims, *q.stride(), *state.stride(),
        **sizes, SAVE_HIDDEN=hidden_pre is not None, ACC_FP64=acc_fp64, num_warps=NUM_WARPS,
    )


def qmix_bwd_triton(
    grad_q_tot: Tensor, q: Tensor, state: Tensor, params: list[Tensor], hidden_pre: Tensor,
    dq: Tensor, dz1: Tensor, dz2: Tensor, g: Tensor, block_b: int | None = None,
) -> None:
    """Launch :func:`~fastmarl.kernels.qmix.qmix_bwd_kernel`: per-sample gradients into ``dq``
    ``[B, n]``, ``dz1`` ``[B, C1 + E]`` and, two-layer only, ``dz2`` ``[B, (n+1)E]`` and ``g``
    ``[B, 2H]`` (all contiguous, in ``hidden_pre``'s dtype, the accumulation dtype); see
    :func:`fastmarl.reference.qmix_grads_from_dz` for the layout."""
    params, dims, grid, sizes = _launch_args(q, state, params, block_b)
    weights = [params[i] for i in (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13)]  # all but V.2's bias
    wrap_triton(qmix_bwd_kernel)[grid](
        grad_q_tot, q, state, hidden_pre, *weights,
        dq, dz1, dz2, g,
        *dims, grad_q_tot.stride(0), *q.stride(), *state.stride(),
        **sizes, ACC_FP64=hidden_pre.dtype == torch.float64, num_warps=NUM_WARPS,
    )


# --------------------------------------------------------------------------- torch kernels


@custom_op("fastmarl::qmix_torch", mutates_args=())
def _qmix_torch(
    q: Tensor, state: Tensor, params: list[Tensor], need_residual: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _as_outputs(q, reference.qmix_forward_flat(q, state, params, need_residual))


@_qmix_torch.register_fake
def _(q, state, params, need_residual):
    # The torch kernel's shapes and strides follow from its inputs' alone: run it on the fakes.
    return _as_outputs(q, reference.qmix_forward_flat(q, state, params, need_residual))


def _as_outputs(like: Tensor, tensors):
    # An op returns tensors, each its own: empty ones stand for the torch kernels' Nones.
    return [like.new_empty(0) if x is None else x for x in tensors]


@custom_op("fastmarl::qmix_backward_torch", mutates_args=())
def _qmix_backward_torch(
    grad_q_tot: Tensor, q: Tensor, state: Tensor, params: list[Tensor], hidden_pre: Tensor,
    z1: Tensor, z2: Tensor, need_state_grad: bool,
) -> list[Tensor]:
    return _as_outputs(q, reference.qmix_backward_flat(
        grad_q_tot, q, state, params, hidden_pre, z1, z2, need_state_grad
    ))


@_qmix_backward_torch.register_fake
def _(grad_q_tot, q, state, params, hidden_pre, z1, z2, need_state_grad):
    return _as_outputs(q, reference.qmix_backward_flat(
        grad_q_tot, q, state, params, hidden_pre, z1, z2, need_state_grad
    ))


# --------------------------------------------------------------------------- public ops


@triton_op("fastmarl::qmix", mutates_args=())
def qmix(
    q: Tensor, state: Tensor, params: list[Tensor], need_residual: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    _check(q, state, params)
    if not _use_kernel(q, params):
        return torch.ops.fastmarl.qmix_torch(q, state, params, need_residual)
    B, _, _, E, _, _ = _sizes(q, params)
    acc = reference.gae_accumulate_dtype(q.dtype, state.dtype, params[0].dtype)
    out_dtype = torch.promote_types(torch.promote_types(q.dtype, state.dtype), params[0].dtype)
    q_tot = torch.empty(B, 1, dtype=out_dtype, device=q.device)
    hidden_pre = torch.empty(B if need_residual else 0, E, dtype=acc, device=q.device)
    qmix_fwd_triton(q, state, params, q_tot, hidden_pre if need_residual else None)
    empty = q.new_empty(0, dtype=acc)
    return q_tot, hidden_pre, empty, empty.clone()


@triton_op("fastmarl::qmix_backward", mutates_args=())
def qmix_backward(
    grad_q_tot: Tensor, q: Tensor, state: Tensor, params: list[Tensor], hidden_pre: Tensor,
    z1: Tensor, z2: Tensor, need_state_grad: bool,
) -> list[Tensor]:
    _check(q, state, params)
    if not _use_kernel(q, params):
        return torch.ops.fastmarl.qmix_backward_torch(
            grad_q_tot, q, state, params, hidden_pre, z1, z2, need_state_grad
        )
    B, _, n, E, H, two_layer = _sizes(q, params)
    acc, device = hidden_pre.dtype, q.device
    dq = torch.empty(B, n, dtype=acc, device=device)
    c1 = sum(params[i].shape[0] for i in (0, 2, 4, 6))
    dz1 = torch.empty(B, c1 + E, dtype=acc, device=device)
    dz2 = torch.empty(B if two_layer else 0, n * E + E, dtype=acc, device=device)
    g = torch.empty(B if two_layer else 0, 2 * H, dtype=acc, device=device)
    qmix_bwd_triton(grad_q_tot, q, state, params, hidden_pre, dq, dz1, dz2, g)
    first = params[0].shape[0]
    return _as_outputs(q, reference.qmix_grads_from_dz(
        grad_q_tot, dq, dz1[:, :first], dz1[:, first:], dz2[:, :n * E], dz2[:, n * E:], g, q, state,
        params, need_state_grad,
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
            "differentiate; call fastmarl.ops.qmix.mix, which sets it when autograd needs it"
        )
    # Only q_tot is differentiable: the residuals are for this backward.
    dq, d_state, *d_params = torch.ops.fastmarl.qmix_backward(
        grad_q_tot, q, state, params, hidden_pre, z1, z2, ctx.need_state_grad
    )
    return dq, (d_state if ctx.need_state_grad else None), d_params, None


qmix.register_autograd(_backward, setup_context=_setup_context)
