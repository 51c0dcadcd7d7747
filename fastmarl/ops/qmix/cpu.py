"""The QMIX mixer's torch kernels, for every tensor that is not on CUDA.

``q`` is ``[B, n]``, ``state`` ``[B, S]``, ``params`` a :class:`~fastmarl.ops.qmix.params.QMixParams`.

- :func:`qmix_forward` / :func:`qmix_backward`: the kernels of ``fastmarl::qmix`` and
  ``fastmarl::qmix_backward`` (also the ``fused`` path). The four Linears that read the state
  run as one GEMM on concatenated weights, chunk by chunk of samples so that the elementwise
  work after it stays in cache; both mixing layers are one ``baddbmm`` each. Computed in float32
  (float64 if any input is float64); results in the promoted dtype.
- :func:`qmix_composite`: TorchRL's ``QMixer.mix`` op sequence (its bits in float32 and
  float64), differentiable by autograd: the ``composite`` path, what ``torch.compile`` fuses.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.functional import elu, linear, relu

from fastmarl.ops.dtypes import accumulate_dtype, cast, result_dtype
from fastmarl.ops.qmix.params import QMixParams
from fastmarl.ops.qmix.weight_grads import weight_and_state_grads

__all__ = ["qmix_forward", "qmix_backward", "qmix_composite", "CPU_CHUNK_ELEMENTS"]

# Samples per chunk: per-agent temporaries ([chunk, n, E]) of at most 2**20 elements (4 MiB in
# fp32) stay in the CPU machine's L3 from one op to the next. Mixer forward+backward, both
# cores, E=32, S=37 (ms, B=4096 / 65536): n=8: 9.5 / 260 with 2**16, 7.1 / 206 with 2**18,
# 6.9 / 170 with 2**20, 6.0 / 258 unchunked; n=32: 31 / 876, 21 / 614, 17 / 582, 19 / 823.
CPU_CHUNK_ELEMENTS = 1 << 20


def qmix_composite(q: Tensor, state: Tensor, params: QMixParams) -> Tensor:
    """``Q_tot`` ``[B, 1]``: TorchRL's ``QMixer.mix``, op for op (EPyMARL's second layers when
    present), on single-precision inputs of one dtype."""
    p = params
    n_agents, embed = q.shape[1], p.embed
    chosen_action_value = q.reshape(-1, 1, n_agents)
    hyper_w_1 = linear(state, p.hyper_w1_weight, p.hyper_w1_bias)
    hyper_w_final = linear(state, p.hyper_wf_weight, p.hyper_wf_bias)
    if p.two_layer:
        hyper_w_1 = linear(relu(hyper_w_1), p.hyper_w1_out_weight, p.hyper_w1_out_bias)
        hyper_w_final = linear(relu(hyper_w_final), p.hyper_wf_out_weight, p.hyper_wf_out_bias)
    # First layer
    w1 = torch.abs(hyper_w_1)
    b1 = linear(state, p.hyper_b1_weight, p.hyper_b1_bias)
    w1 = w1.view(-1, n_agents, embed)
    b1 = b1.view(-1, 1, embed)
    hidden = elu(torch.bmm(chosen_action_value, w1) + b1)  # [B, 1, E]
    # Second layer
    w_final = torch.abs(hyper_w_final)
    w_final = w_final.view(-1, embed, 1)
    v = linear(relu(linear(state, p.v1_weight, p.v1_bias)), p.v2_weight, p.v2_bias).view(-1, 1, 1)
    y = torch.bmm(hidden, w_final) + v  # [B, 1, 1]
    return y.view(-1, 1)


def _chunks(batch: int, n_agents: int, embed: int, chunk_elements: int) -> list:
    # Row slices; [None] when one chunk covers the batch (then nothing is sliced).
    step = max(1, chunk_elements // (n_agents * embed))
    return [None] if batch <= step else [slice(r, r + step) for r in range(0, batch, step)]


def _rows(x: Tensor | None, chunk: slice | None) -> Tensor | None:
    return x if chunk is None or x is None else x[chunk]


def qmix_forward(
    q: Tensor, state: Tensor, params: QMixParams, need_residual: bool, *,
    chunk_elements: int = CPU_CHUNK_ELEMENTS,
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """``(q_tot [B, 1], hidden_pre [B, 1, E], z1 [B, C1], z2 [B, (n+1)E])``: the mixed value,
    the mixing layer's pre-activation, and the hypernetwork outputs before ``abs``/ReLU (``z1``:
    the four Linears that read the state, ``z2``: the second layers of two-layer
    hypernetworks). The last three are what :func:`qmix_backward` reads; they are None when
    ``need_residual`` is False, and ``z2`` is None for one-layer hypernetworks."""
    acc = accumulate_dtype(q.dtype, state.dtype, params.hyper_w1_weight.dtype)
    out_dtype = result_dtype(q, state, params.hyper_w1_weight)
    q, state = cast(q, acc), cast(state, acc)
    p = params.map(lambda x: cast(x, acc))
    B, n = q.shape
    E = p.embed
    rows = [w.shape[0] for w in p.state_weights]
    chunks = _chunks(B, n, E, chunk_elements)
    # Concatenating the weights copies C1*S elements a call: worth it but for a small batch and
    # wide weights. Both cores of the CPU machine, E=32: B=32, n=3, S=48: 19 us concatenated
    # against 53 us for four GEMMs; B=32, n=32, S=1440: 1369 against 1151 us; B=4096, n=32,
    # S=1440: 72 against 78 ms.
    separate = B < 512 and sum(rows) * state.shape[1] >= 1 << 18
    if not separate:
        weight, bias = torch.cat(p.state_weights), torch.cat(p.state_biases)
    z1 = hidden_pre = y = z2 = None
    if chunks[0] is not None:
        # Without a backward to feed, the per-sample intermediates live in one chunk-sized
        # scratch reused chunk after chunk: a fresh [B, C1] buffer a call is a large allocation
        # that the OS maps and zeroes page by page. B=65536, n=3, E=32 (50 MB), interleaved
        # medians on the CPU machine (bench/interleaved.py): 55 ms against TorchRL's 30 with
        # the full buffer, 34 against 44 with one chunk of scratch.
        held = B if need_residual else min(B, chunks[0].stop)
        z1, hidden_pre, y = state.new_empty(held, sum(rows)), state.new_empty(held, 1, E), state.new_empty(B, 1, 1)
        z2 = state.new_empty(held, n * E + E) if p.two_layer else None
    for chunk in chunks:
        # Rows of the intermediates: the chunk's own, or the scratch's first rows.
        held_rows = chunk if need_residual or chunk is None else slice(0, min(chunk.stop, B) - chunk.start)
        # [c, C1]: hyper_w_1 (or its first layer), hyper_w_final (ditto), hyper_b_1, V.0
        if separate:
            z1_c = state.new_empty(B, sum(rows)) if chunk is None else z1[held_rows]
            for column, w, b in zip(z1_c.split(rows, dim=1), p.state_weights, p.state_biases):
                torch.addmm(b, _rows(state, chunk), w.t(), out=column)
        elif chunk is None:
            z1_c = linear(state, weight, bias)
        else:
            z1_c = torch.addmm(bias, state[chunk], weight.t(), out=z1[held_rows])
        w1, wf, b1, v_hidden = z1_c.split(rows, dim=1)
        z2_c = None
        if p.two_layer:
            # [c, nE + E]: the second layers, in one buffer for the backward
            z2_c = z1_c.new_empty(B, n * E + E) if chunk is None else z2[held_rows]
            h1, hf = w1.relu(), wf.relu()
            w1, wf = z2_c.split([n * E, E], dim=1)
            torch.addmm(p.hyper_w1_out_bias, h1, p.hyper_w1_out_weight.t(), out=w1)
            torch.addmm(p.hyper_wf_out_bias, hf, p.hyper_wf_out_weight.t(), out=wf)
        # [c, 1, E]: b1 + q @ |w1|, one [1, n] @ [n, E] per sample
        a = torch.baddbmm(b1.unsqueeze(1), _rows(q, chunk).unsqueeze(1), w1.abs().view(-1, n, E),
                          out=_rows(hidden_pre, held_rows))
        # [c, 1, 1]: V(s) + ELU(a) @ |wf|
        v = linear(v_hidden.relu(), p.v2_weight, p.v2_bias)
        y_c = torch.baddbmm(v.unsqueeze(2), elu(a), wf.abs().unsqueeze(2), out=_rows(y, chunk))
        if chunk is None:
            z1, z2, hidden_pre, y = z1_c, z2_c, a, y_c
    if not need_residual:
        return cast(y.view(B, 1), out_dtype), None, None, None
    return cast(y.view(B, 1), out_dtype), hidden_pre, z1, z2


def qmix_backward(
    grad_q_tot: Tensor, q: Tensor, state: Tensor, params: QMixParams, hidden_pre: Tensor,
    z1: Tensor, z2: Tensor | None, need_state_grad: bool, independent: bool = True, *,
    chunk_elements: int = CPU_CHUNK_ELEMENTS,
) -> list[Tensor | None]:
    """``[dq, dstate, *dparams]`` (``dparams`` in :meth:`QMixParams.flat` order) from the
    residuals of :func:`qmix_forward`. With ``a`` = ``hidden_pre``::

        d wf     = dy * ELU(a) * sgn(wf)          d a  = dy * |wf| * ELU'(a)
        d w1_i   = d a * q_i * sgn(w1_i)           d q_i = sum_e d a * |w1_i|
        d V.0(s) = dy * V.2 * [V.0(s) > 0]         d V.2 = sum_b dy * relu(V.0(s))

    then back through the second layers and their ReLU (two-layer hypernetworks), chunk by
    chunk of samples, and :func:`~fastmarl.ops.qmix.weight_grads.weight_and_state_grads` for the
    GEMMs that reduce over the batch. ``dstate`` is None unless ``need_state_grad``."""
    acc = z1.dtype
    dy = cast(grad_q_tot, acc).view(-1, 1)  # [B, 1]
    q_acc = cast(q, acc)
    v2_weight = cast(params.v2_weight, acc)
    B, n = q_acc.shape
    E = params.embed
    hidden_pre = hidden_pre.view(B, E)
    rows = [w.shape[0] for w in params.state_weights]
    two_layer = params.two_layer
    if two_layer:
        w1_out, wf_out = cast(params.hyper_w1_out_weight, acc), cast(params.hyper_wf_out_weight, acc)
    # The gradients of z1 in two contiguous blocks: the first Linear's (hyper_w_1 or its first
    # layer) and the rest's (hyper_w_final ditto, hyper_b_1, V.0, then V.2's weight per sample);
    # z2's likewise. Writing the [c, n, E] tiles into a column slice of one [B, C1 + E] buffer
    # was 5x slower (0.85 against 0.16 ms at 10922 samples, n=3, E=32, on the CPU machine).
    dz_first, dz_rest = z1.new_empty(B, rows[0]), z1.new_empty(B, rows[1] + 3 * E)
    dz2_w1, dz2_wf = (z1.new_empty(B, n * E), z1.new_empty(B, E)) if two_layer else (None, None)
    dq = z1.new_empty(B, n)
    chunks = _chunks(B, n, E, chunk_elements)
    buffer = None if chunks[0] is None else z1.new_empty(2, chunks[0].stop, n, E)
    g = torch.relu(z1[:, :rows[0] + rows[1]]) if two_layer else None  # [B, 2H]
    for chunk in chunks:
        dy_c, a = _rows(dy, chunk), _rows(hidden_pre, chunk)
        w1, wf, _, v_hidden = _rows(z1, chunk).split(rows, dim=1)
        d_z1_w1 = _rows(dz_first, chunk)
        d_z1_wf, d_a, d_v1, d_v2 = _rows(dz_rest, chunk).split([rows[1], E, E, E], dim=1)
        if two_layer:
            w1, wf = _rows(z2, chunk).split([n * E, E], dim=1)
            d_w1, d_wf = _rows(dz2_w1, chunk), _rows(dz2_wf, chunk)
        else:
            d_w1, d_wf = d_z1_w1, d_z1_wf
        # y = sum_e ELU(a) |wf| + V(s)
        torch.mul(elu(a).mul_(dy_c), wf.sgn(), out=d_wf)
        torch.ops.aten.elu_backward.grad_input(wf.abs().mul_(dy_c), 1.0, 1, 1, False, a, grad_input=d_a)
        # a = b1 + sum_i q_i |w1_i|. With t = sgn(w1) d_a, t * w1 is d_a |w1| exactly: one pass
        # fewer than abs and a batched matvec, 0.63 against 1.35 ms at 1024 samples, n=E=32.
        w1 = w1.view(-1, n, E)
        c = w1.shape[0]
        t = torch.sgn(w1, out=None if buffer is None else buffer[0, :c]).mul_(d_a.unsqueeze(1))
        torch.sum(torch.mul(t, w1, out=None if buffer is None else buffer[1, :c]), 2,
                  out=_rows(dq, chunk))
        torch.mul(t, _rows(q_acc, chunk).unsqueeze(2), out=d_w1.view(-1, n, E))
        # V(s) = V.2 relu(V.0(s)) + c
        torch.ops.aten.threshold_backward.grad_input(dy_c * v2_weight, v_hidden, 0, grad_input=d_v1)
        torch.clamp_min(v_hidden, 0, out=d_v2).mul_(dy_c)
        if two_layer:
            h1, hf = _rows(g, chunk).split(rows[:2], dim=1)
            torch.mul(d_w1 @ w1_out, h1 > 0, out=d_z1_w1)
            torch.mul(d_wf @ wf_out, hf > 0, out=d_z1_wf)
    return weight_and_state_grads(grad_q_tot, dq, dz_first, dz_rest, dz2_w1, dz2_wf, g, q, state,
                                  params, need_state_grad, independent)
