"""Triton kernels of the QMIX hypernetwork mixer (TorchRL's ``QMixer``, PyMARL's mixer).

Every operand arrives flattened: agent Q-values ``q`` ``[B, n]`` and state ``s`` ``[B, S]``
with their own strides, hypernetwork weights contiguous ``[rows, cols]`` as ``nn.Linear`` keeps
them. One program owns ``BB`` samples. With ``a`` the pre-activation of the mixing layer::

    w1_i = |hyper_w_1(s)[i*E:(i+1)*E]|                 (one- or two-layer hypernetwork)
    a    = sum_i q_i * w1_i + hyper_b_1(s)              [BB, E]
    y    = sum_e ELU(a) * |hyper_w_final(s)| + V(s)     [BB]

Forward: the state GEMMs run as ``tl.dot`` over K tiles of ``BK`` state features (so any S, 37
or a flattened 64x64x3 image, works), one ``[BB, E]`` tile per agent, accumulated into ``a``
in registers; nothing but ``y`` and, when a backward will follow, ``a`` (``[B, E]``) is written.
Saving ``a`` spares the backward the n per-agent GEMM tiles needed to rebuild it; the other
hypernetwork outputs are recomputed from the state, which is re-read (``B*S`` elements) rather
than saving ``B*(n+3)*E``.

Backward: recomputes the hypernetwork outputs, writes ``dq`` and the gradients of the
hypernetwork pre-activations ``dZ1`` (columns in the order of the state weights, then
``dy * relu(V1(s))`` for ``V.2.weight``), ``dZ2`` and the ReLU activations ``G`` (two-layer
only). The weight gradients ``dZ^T @ s`` reduce over the whole batch: the host does them (and
``dZ @ W`` for the state gradient) with cuBLAS matmuls, which split that long K dimension
across the GPU; doing them here would need atomics or a second reduction pass. That choice was
made without a GPU to measure it on.

``tl.dot`` runs in fp32 with ``input_precision="ieee"`` (no tf32), fp64 for fp64 inputs;
fp16/bf16 inputs are loaded and computed in fp32. Offsets are int64.
"""

import triton
import triton.language as tl

# Samples per program (BB) and warps are the launch configuration: fastmarl/ops/tuning.py,
# measured per GPU architecture by bench/tune_kernels.py. tl.dot needs BB >= 16.

# State features per K tile: S=37 (and most vector states) fits one tile; an image state loops.
MAX_BLOCK_K = 64
# Widest mixing embedding / hypernetwork hidden width the kernels keep in registers ([BB, E]
# and [BB, H] tiles, several live at once); wider mixers take the torch path on CUDA too.
MAX_BLOCK_E = 128
MAX_BLOCK_H = 128


def qmix_block_sizes(state_dim: int, embed: int, hidden: int) -> tuple[int, int, int]:
    """``(BK, BE, BH)``; every block is at least 16 wide, the smallest ``tl.dot`` tile."""
    block_k = min(max(16, triton.next_power_of_2(int(state_dim))), MAX_BLOCK_K)
    block_e = max(16, triton.next_power_of_2(int(embed)))
    block_h = max(16, triton.next_power_of_2(max(int(hidden), 1)))
    return block_k, block_e, block_h


def qmix_kernel_fits(embed: int, hidden: int) -> bool:
    """Whether the kernels take a mixer of this width (see ``MAX_BLOCK_E``/``MAX_BLOCK_H``)."""
    _, block_e, block_h = qmix_block_sizes(1, embed, hidden)
    return block_e <= MAX_BLOCK_E and block_h <= MAX_BLOCK_H


def qmix_grid(batch: int, block_b: int) -> tuple[int]:
    """One program per block of samples."""
    return (triton.cdiv(batch, block_b),)


@triton.jit
def _state_linear(state_ptr, o_b, m_b, s_sb, s_sk, S, w_ptr, bias_ptr, row0, n_rows,
                  BB: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr, ACC: tl.constexpr):
    # [BB, BN]: s @ W[row0:row0+n_rows].T + bias, W contiguous [*, S]; padded columns are 0.
    o_n = tl.arange(0, BN)
    m_n = o_n < n_rows
    rows = (row0 + o_n).to(tl.int64)
    b_acc = tl.zeros([BB, BN], dtype=ACC)
    for k0 in range(0, S, BK):
        o_k = k0 + tl.arange(0, BK)
        m_k = o_k < S
        o_k = o_k.to(tl.int64)
        b_s = tl.load(state_ptr + o_b[:, None] * s_sb + o_k[None, :] * s_sk,
                      mask=m_b[:, None] & m_k[None, :], other=0.0).to(ACC)
        # [BK, BN]: W's rows as columns
        b_w = tl.load(w_ptr + rows[None, :] * S + o_k[:, None],
                      mask=m_k[:, None] & m_n[None, :], other=0.0).to(ACC)
        b_acc = tl.dot(b_s, b_w, acc=b_acc, input_precision="ieee")
    b_bias = tl.load(bias_ptr + rows, mask=m_n, other=0.0).to(ACC)
    return b_acc + b_bias[None, :]


@triton.jit
def _hidden_linear(b_h, w_ptr, bias_ptr, row0, n_rows, H,
                   BH: tl.constexpr, BN: tl.constexpr, ACC: tl.constexpr):
    # [BB, BN]: b_h [BB, BH] @ W[row0:row0+n_rows].T + bias, W contiguous [*, H].
    o_n = tl.arange(0, BN)
    m_n = o_n < n_rows
    rows = (row0 + o_n).to(tl.int64)
    o_h = tl.arange(0, BH)
    b_w = tl.load(w_ptr + rows[None, :] * H + o_h[:, None],
                  mask=(o_h < H)[:, None] & m_n[None, :], other=0.0).to(ACC)
    b_bias = tl.load(bias_ptr + rows, mask=m_n, other=0.0).to(ACC)
    return tl.dot(b_h, b_w, input_precision="ieee", out_dtype=ACC) + b_bias[None, :]


@triton.jit
def _load_rows(w_ptr, row0, n_rows, H, BN: tl.constexpr, BH: tl.constexpr, ACC: tl.constexpr):
    # [BN, BH]: W[row0:row0+n_rows] of a contiguous [*, H] weight (for dX = dY @ W).
    o_n = tl.arange(0, BN)
    o_h = tl.arange(0, BH)
    rows = (row0 + o_n).to(tl.int64)
    return tl.load(w_ptr + rows[:, None] * H + o_h[None, :],
                   mask=(o_n < n_rows)[:, None] & (o_h < H)[None, :], other=0.0).to(ACC)


@triton.jit
def _sign(x):
    # torch.sgn: d|x|/dx is 0 at 0, as abs's backward in TorchRL's autograd.
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0)).to(x.dtype)


@triton.jit
def _store_cols(ptr, tile, o_b, m_b, width, col0, n_cols, BN: tl.constexpr):
    # tile [BB, BN] into columns col0 .. col0+n_cols of a contiguous [B, width] buffer.
    o_n = tl.arange(0, BN)
    tl.store(ptr + o_b[:, None] * width + (col0 + o_n)[None, :],
             tile.to(ptr.dtype.element_ty), mask=m_b[:, None] & (o_n < n_cols)[None, :])


@triton.jit
def _hypernet_first(state_ptr, o_b, m_b, s_sb, s_sk, S, w1_ptr, w1b_ptr, wf_ptr, wfb_ptr,
                    wf2_ptr, wf2b_ptr, E, H, BB: tl.constexpr, BK: tl.constexpr, BE: tl.constexpr,
                    BH: tl.constexpr, TWO_LAYER: tl.constexpr, ACC: tl.constexpr):
    # (h1 [BB, BH], hf [BB, BH], hyper_w_final(s) [BB, BE] before abs); h1 and hf are the ReLU
    # hidden layers of two-layer hypernetworks (unused zeros for one layer).
    if TWO_LAYER:
        b_h1 = tl.maximum(_state_linear(state_ptr, o_b, m_b, s_sb, s_sk, S, w1_ptr, w1b_ptr, 0, H,
                                        BB, BK, BH, ACC), 0.0)
        b_hf = tl.maximum(_state_linear(state_ptr, o_b, m_b, s_sb, s_sk, S, wf_ptr, wfb_ptr, 0, H,
                                        BB, BK, BH, ACC), 0.0)
        b_wf = _hidden_linear(b_hf, wf2_ptr, wf2b_ptr, 0, E, H, BH, BE, ACC)
    else:
        b_h1 = tl.zeros([BB, BH], dtype=ACC)
        b_hf = b_h1
        b_wf = _state_linear(state_ptr, o_b, m_b, s_sb, s_sk, S, wf_ptr, wfb_ptr, 0, E, BB, BK, BE, ACC)
    return b_h1, b_hf, b_wf


@triton.jit
def _hyper_w1(state_ptr, o_b, m_b, s_sb, s_sk, S, w1_ptr, w1b_ptr, b_h1, w12_ptr, w12b_ptr, i, E, H,
              BB: tl.constexpr, BK: tl.constexpr, BE: tl.constexpr, BH: tl.constexpr,
              TWO_LAYER: tl.constexpr, ACC: tl.constexpr):
    # [BB, BE]: agent i's block of hyper_w_1(s), before abs
    if TWO_LAYER:
        b_w = _hidden_linear(b_h1, w12_ptr, w12b_ptr, i * E, E, H, BH, BE, ACC)
    else:
        b_w = _state_linear(state_ptr, o_b, m_b, s_sb, s_sk, S, w1_ptr, w1b_ptr, i * E, E,
                            BB, BK, BE, ACC)
    return b_w


@triton.jit(do_not_specialize=["B"])
def qmix_fwd_kernel(
    q_ptr, state_ptr,
    w1_ptr, w1b_ptr, wf_ptr, wfb_ptr, b1_ptr, b1b_ptr, v1_ptr, v1b_ptr, v2_ptr, v2b_ptr,
    w12_ptr, w12b_ptr, wf2_ptr, wf2b_ptr,
    q_tot_ptr, hidden_pre_ptr,
    B, S, N, E, H,
    s_qb, s_qn, s_sb, s_sk,
    BB: tl.constexpr, BK: tl.constexpr, BE: tl.constexpr, BH: tl.constexpr,
    TWO_LAYER: tl.constexpr, SAVE_HIDDEN: tl.constexpr, ACC_FP64: tl.constexpr,
):
    acc = tl.float64 if ACC_FP64 else tl.float32
    i_b = tl.program_id(0).to(tl.int64)
    o_b = i_b * BB + tl.arange(0, BB)
    m_b = o_b < B
    o_e = tl.arange(0, BE)
    m_e = o_e < E

    b_h1, b_hf, b_wf = _hypernet_first(state_ptr, o_b, m_b, s_sb, s_sk, S, w1_ptr, w1b_ptr, wf_ptr,
                                       wfb_ptr, wf2_ptr, wf2b_ptr, E, H, BB, BK, BE, BH, TWO_LAYER, acc)

    # [BB, BE]: sum_i q_i |w1_i|, one hypernetwork tile per agent
    b_a = tl.zeros([BB, BE], dtype=acc)
    for i in range(N):
        b_q = tl.load(q_ptr + o_b * s_qb + i * s_qn, mask=m_b, other=0.0).to(acc)
        b_w = _hyper_w1(state_ptr, o_b, m_b, s_sb, s_sk, S, w1_ptr, w1b_ptr, b_h1, w12_ptr, w12b_ptr,
                        i, E, H, BB, BK, BE, BH, TWO_LAYER, acc)
        b_a += b_q[:, None] * tl.abs(b_w)
    b_a += _state_linear(state_ptr, o_b, m_b, s_sb, s_sk, S, b1_ptr, b1b_ptr, 0, E, BB, BK, BE, acc)
    b_hidden = tl.where(b_a > 0, b_a, tl.exp(b_a) - 1.0)

    # V(s) = V.2(relu(V.0(s))), a [BB] vector
    b_u = tl.maximum(_state_linear(state_ptr, o_b, m_b, s_sb, s_sk, S, v1_ptr, v1b_ptr, 0, E,
                                   BB, BK, BE, acc), 0.0)
    b_v2 = tl.load(v2_ptr + o_e, mask=m_e, other=0.0).to(acc)
    b_v = tl.sum(b_u * b_v2[None, :], axis=1) + tl.load(v2b_ptr).to(acc)

    b_y = tl.sum(b_hidden * tl.abs(b_wf), axis=1) + b_v
    tl.store(q_tot_ptr + o_b, b_y.to(q_tot_ptr.dtype.element_ty), mask=m_b)
    if SAVE_HIDDEN:
        _store_cols(hidden_pre_ptr, b_a, o_b, m_b, E, 0, E, BE)


@triton.jit(do_not_specialize=["B"])
def qmix_bwd_kernel(
    grad_q_tot_ptr, q_ptr, state_ptr, hidden_pre_ptr,
    w1_ptr, w1b_ptr, wf_ptr, wfb_ptr, b1_ptr, b1b_ptr, v1_ptr, v1b_ptr, v2_ptr,
    w12_ptr, w12b_ptr, wf2_ptr, wf2b_ptr,
    dq_ptr, dz1_ptr, dz2_ptr, g_ptr,
    B, S, N, E, H,
    s_gb, s_qb, s_qn, s_sb, s_sk,
    BB: tl.constexpr, BK: tl.constexpr, BE: tl.constexpr, BH: tl.constexpr,
    TWO_LAYER: tl.constexpr, ACC_FP64: tl.constexpr,
):
    acc = tl.float64 if ACC_FP64 else tl.float32
    i_b = tl.program_id(0).to(tl.int64)
    o_b = i_b * BB + tl.arange(0, BB)
    m_b = o_b < B
    o_e = tl.arange(0, BE)
    m_e = o_e < E
    # dZ1 columns: [w1 | wf | b1 | V.0 | dy*relu(V.0)] (one layer, w1 is n*E wide) or
    # [h1 | hf | b1 | V.0 | dy*relu(V.0)] (two layers, h1 and hf are H wide)
    if TWO_LAYER:
        col_b1 = 2 * H
    else:
        col_b1 = N * E + E
    width1 = col_b1 + 3 * E
    width2 = N * E + E

    b_dy = tl.load(grad_q_tot_ptr + o_b * s_gb, mask=m_b, other=0.0).to(acc)
    b_a = tl.load(hidden_pre_ptr + o_b[:, None] * E + o_e[None, :],
                  mask=m_b[:, None] & m_e[None, :], other=0.0).to(acc)
    b_hidden = tl.where(b_a > 0, b_a, tl.exp(b_a) - 1.0)
    b_elu_grad = tl.where(b_a > 0, 1.0, tl.exp(b_a))

    b_h1, b_hf, b_wf = _hypernet_first(state_ptr, o_b, m_b, s_sb, s_sk, S, w1_ptr, w1b_ptr, wf_ptr,
                                       wfb_ptr, wf2_ptr, wf2b_ptr, E, H, BB, BK, BE, BH, TWO_LAYER, acc)
    if TWO_LAYER:
        _store_cols(g_ptr, b_h1, o_b, m_b, 2 * H, 0, H, BH)
        _store_cols(g_ptr, b_hf, o_b, m_b, 2 * H, H, H, BH)

    # y = sum_e ELU(a) |wf| + V(s)
    b_dwf = b_dy[:, None] * b_hidden * _sign(b_wf)
    b_da = b_dy[:, None] * tl.abs(b_wf) * b_elu_grad
    _store_cols(dz1_ptr, b_da, o_b, m_b, width1, col_b1, E, BE)

    b_u = _state_linear(state_ptr, o_b, m_b, s_sb, s_sk, S, v1_ptr, v1b_ptr, 0, E, BB, BK, BE, acc)
    b_v2 = tl.load(v2_ptr + o_e, mask=m_e, other=0.0).to(acc)
    b_du = tl.where(b_u > 0, b_dy[:, None] * b_v2[None, :], 0.0)
    _store_cols(dz1_ptr, b_du, o_b, m_b, width1, col_b1 + E, E, BE)
    _store_cols(dz1_ptr, b_dy[:, None] * tl.maximum(b_u, 0.0), o_b, m_b, width1, col_b1 + 2 * E, E, BE)

    if TWO_LAYER:
        _store_cols(dz2_ptr, b_dwf, o_b, m_b, width2, N * E, E, BE)
        # [BB, BH]: back through hyper_w_final.2 and its ReLU
        b_dhf = tl.dot(b_dwf, _load_rows(wf2_ptr, 0, E, H, BE, BH, acc), input_precision="ieee",
                       out_dtype=acc)
        _store_cols(dz1_ptr, tl.where(b_hf > 0, b_dhf, 0.0), o_b, m_b, width1, H, H, BH)
        b_dh1 = tl.zeros([BB, BH], dtype=acc)
    else:
        _store_cols(dz1_ptr, b_dwf, o_b, m_b, width1, N * E, E, BE)

    # a = sum_i q_i |w1_i| + b1
    for i in range(N):
        b_q = tl.load(q_ptr + o_b * s_qb + i * s_qn, mask=m_b, other=0.0).to(acc)
        b_w = _hyper_w1(state_ptr, o_b, m_b, s_sb, s_sk, S, w1_ptr, w1b_ptr, b_h1, w12_ptr, w12b_ptr,
                        i, E, H, BB, BK, BE, BH, TWO_LAYER, acc)
        b_dq = tl.sum(b_da * tl.abs(b_w), axis=1)
        tl.store(dq_ptr + o_b * N + i, b_dq.to(dq_ptr.dtype.element_ty), mask=m_b)
        b_dw = b_da * b_q[:, None] * _sign(b_w)
        if TWO_LAYER:
            _store_cols(dz2_ptr, b_dw, o_b, m_b, width2, i * E, E, BE)
            b_dh1 = tl.dot(b_dw, _load_rows(w12_ptr, i * E, E, H, BE, BH, acc), acc=b_dh1,
                           input_precision="ieee")
        else:
            _store_cols(dz1_ptr, b_dw, o_b, m_b, width1, i * E, E, BE)

    if TWO_LAYER:
        _store_cols(dz1_ptr, tl.where(b_h1 > 0, b_dh1, 0.0), o_b, m_b, width1, 0, H, BH)
