"""Triton kernels of the multi-agent GAE scan.

Every operand arrives viewed as ``[R, T, F]``: ``R`` is the product of the batch dims before
time, ``F`` the product of the feature dims after it (agents and the trailing 1). Each operand
has its own three strides, so a team-shared reward or done flag expanded across the agents
arrives with stride 0 and is read, never materialised; ``done``/``terminated`` are read as the
bool/uint8 they are. One program owns one row ``r`` and ``BF`` features and walks time in tiles
of ``BT`` steps: a tile is one coalesced ``[BT, BF]`` load per operand, the recurrence inside it
is a ``tl.associative_scan`` over affine maps, and a ``[BF]`` carry links the tiles, so T is
unbounded (T=10,000 is 20 tiles of 512).

Forward (reverse time)::

    delta_t = r_t + (g_t * (1 - term_t)) * nv_t - v_t
    adv_t   = delta_t + (l_t * g_t * (1 - done_t)) * adv_{t+1}
    vt_t    = adv_t + v_t

Backward (forward time, the adjoint of the reverse recurrence)::

    u_t     = (dadv_t + dvt_t) + (l_{t-1} * g_{t-1} * (1 - done_{t-1})) * u_{t-1}
    dr_t    = u_t;   dnv_t = g_t * (1 - term_t) * u_t;   dv_t = dvt_t - u_t

γ and λ are runtime fp32 scalars (never constexpr: an annealed γ must not recompile), each
optionally multiplied by a tensor read through its own strides (TorchRL's tensor-γ path, with
no [B, T, T] matrix). Accumulation is fp32 (fp64 for fp64 inputs); offsets are int64.
"""

import triton
import triton.language as tl

# Widest feature block a program owns; the launch configuration (BT, num_warps) comes from
# fastmarl/ops/tuning.py, measured per GPU architecture by bench/tune_kernels.py.
MAX_BLOCK_F = 64


def gae_block_f(num_features: int) -> int:
    """``BF`` for ``F`` features: F rounded up to a power of two, at most 64 lanes. Depends on F
    only (not T), so a new rollout length never changes a constexpr."""
    return min(triton.next_power_of_2(max(int(num_features), 1)), MAX_BLOCK_F)


def gae_grid(num_rows: int, num_features: int, block_f: int) -> tuple[int, int]:
    """One program per (row, block of features)."""
    return (num_rows, triton.cdiv(num_features, block_f))


@triton.jit
def _compose_affine(a_far, b_far, a_step, b_step):
    # (a_far, b_far) is the map accumulated on the far side of the scan, (a_step, b_step) the
    # step's x -> b + a * x; the step's map applied to the far one is again affine.
    return a_far * a_step, b_step + a_step * b_far


@triton.jit
def _row_of(tile, offsets_t, t):
    # Row t of a [BT, BF] tile as a [BF] vector (Triton has no dynamic row indexing).
    return tl.sum(tl.where(offsets_t[:, None] == t, tile, 0.0), axis=0)


@triton.jit(do_not_specialize=["T"])
def gae_fwd_kernel(
    value_ptr, next_value_ptr, reward_ptr, done_ptr, terminated_ptr, gamma_ptr, lmbda_ptr,
    advantage_ptr, value_target_ptr,
    gamma, lmbda, T, F,
    s_v_r, s_v_t, s_v_f,
    s_nv_r, s_nv_t, s_nv_f,
    s_r_r, s_r_t, s_r_f,
    s_d_r, s_d_t, s_d_f,
    s_te_r, s_te_t, s_te_f,
    s_g_r, s_g_t, s_g_f,
    s_l_r, s_l_t, s_l_f,
    BT: tl.constexpr, BF: tl.constexpr,
    HAS_GAMMA_TENSOR: tl.constexpr, HAS_LMBDA_TENSOR: tl.constexpr, ACC_FP64: tl.constexpr,
):
    acc = tl.float64 if ACC_FP64 else tl.float32
    i_r = tl.program_id(0).to(tl.int64)
    i_f = tl.program_id(1)
    o_f = i_f * BF + tl.arange(0, BF)
    m_f = o_f < F
    o_f = o_f.to(tl.int64)
    gamma = tl.cast(gamma, acc)
    lmbda = tl.cast(lmbda, acc)
    # Outputs are contiguous [R, T, F].
    out_row = i_r * T * F

    carry = tl.zeros([BF], dtype=acc)
    n_tiles = tl.cdiv(T, BT)
    for i_c in range(n_tiles):
        t0 = (n_tiles - 1 - i_c) * BT
        o_t = t0 + tl.arange(0, BT)
        m = (o_t < T)[:, None] & m_f[None, :]
        o_t = o_t.to(tl.int64)

        b_v = tl.load(value_ptr + i_r * s_v_r + o_t[:, None] * s_v_t + o_f[None, :] * s_v_f,
                      mask=m, other=0.0).to(acc)
        b_nv = tl.load(next_value_ptr + i_r * s_nv_r + o_t[:, None] * s_nv_t + o_f[None, :] * s_nv_f,
                       mask=m, other=0.0).to(acc)
        b_r = tl.load(reward_ptr + i_r * s_r_r + o_t[:, None] * s_r_t + o_f[None, :] * s_r_f,
                      mask=m, other=0.0).to(acc)
        b_done = tl.load(done_ptr + i_r * s_d_r + o_t[:, None] * s_d_t + o_f[None, :] * s_d_f,
                         mask=m, other=1) != 0
        b_term = tl.load(terminated_ptr + i_r * s_te_r + o_t[:, None] * s_te_t + o_f[None, :] * s_te_f,
                         mask=m, other=1) != 0
        b_g = tl.full([BT, BF], 1.0, acc) * gamma
        if HAS_GAMMA_TENSOR:
            b_g = b_g * tl.load(gamma_ptr + i_r * s_g_r + o_t[:, None] * s_g_t + o_f[None, :] * s_g_f,
                                mask=m, other=0.0).to(acc)
        b_l = tl.full([BT, BF], 1.0, acc) * lmbda
        if HAS_LMBDA_TENSOR:
            b_l = b_l * tl.load(lmbda_ptr + i_r * s_l_r + o_t[:, None] * s_l_t + o_f[None, :] * s_l_f,
                                mask=m, other=0.0).to(acc)

        # Multiplying (not selecting) keeps TorchRL's NaN semantics: 0 * NaN next value is NaN.
        b_delta = b_r + tl.where(b_term, 0.0, b_g) * b_nv - b_v
        b_delta = tl.where(m, b_delta, 0.0)
        b_disc = tl.where(b_done, 0.0, b_l * b_g)
        # [BT, BF]: maps from adv at the tile's far end (t0 + BT) to adv_t.
        b_a, b_b = tl.associative_scan((b_disc, b_delta), 0, _compose_affine, reverse=True)
        b_adv = b_b + b_a * carry[None, :]

        o_out = out_row + o_t[:, None] * F + o_f[None, :]
        tl.store(advantage_ptr + o_out, b_adv.to(advantage_ptr.dtype.element_ty), mask=m)
        tl.store(value_target_ptr + o_out, (b_adv + b_v).to(value_target_ptr.dtype.element_ty), mask=m)
        carry = _row_of(b_adv, o_t, t0)


@triton.jit(do_not_specialize=["T"])
def gae_bwd_kernel(
    grad_advantage_ptr, grad_value_target_ptr, done_ptr, terminated_ptr, gamma_ptr, lmbda_ptr,
    grad_value_ptr, grad_next_value_ptr, grad_reward_ptr,
    gamma, lmbda, T, F,
    s_ga_r, s_ga_t, s_ga_f,
    s_gv_r, s_gv_t, s_gv_f,
    s_d_r, s_d_t, s_d_f,
    s_te_r, s_te_t, s_te_f,
    s_g_r, s_g_t, s_g_f,
    s_l_r, s_l_t, s_l_f,
    BT: tl.constexpr, BF: tl.constexpr,
    HAS_GAMMA_TENSOR: tl.constexpr, HAS_LMBDA_TENSOR: tl.constexpr, ACC_FP64: tl.constexpr,
):
    acc = tl.float64 if ACC_FP64 else tl.float32
    i_r = tl.program_id(0).to(tl.int64)
    i_f = tl.program_id(1)
    o_f = i_f * BF + tl.arange(0, BF)
    m_f = o_f < F
    o_f = o_f.to(tl.int64)
    gamma = tl.cast(gamma, acc)
    lmbda = tl.cast(lmbda, acc)
    out_row = i_r * T * F

    carry = tl.zeros([BF], dtype=acc)
    n_tiles = tl.cdiv(T, BT)
    for i_c in range(n_tiles):
        t0 = i_c * BT
        o_t = t0 + tl.arange(0, BT)
        m = (o_t < T)[:, None] & m_f[None, :]
        # The discount that carries u_{t-1} into u_t is the one of step t-1.
        m_prev = m & (o_t >= 1)[:, None]
        o_t = o_t.to(tl.int64)
        o_p = o_t - 1

        b_gvt = tl.load(grad_value_target_ptr + i_r * s_gv_r + o_t[:, None] * s_gv_t + o_f[None, :] * s_gv_f,
                        mask=m, other=0.0).to(acc)
        b_grad = tl.load(grad_advantage_ptr + i_r * s_ga_r + o_t[:, None] * s_ga_t + o_f[None, :] * s_ga_f,
                         mask=m, other=0.0).to(acc) + b_gvt
        b_term = tl.load(terminated_ptr + i_r * s_te_r + o_t[:, None] * s_te_t + o_f[None, :] * s_te_f,
                         mask=m, other=1) != 0
        b_done_p = tl.load(done_ptr + i_r * s_d_r + o_p[:, None] * s_d_t + o_f[None, :] * s_d_f,
                           mask=m_prev, other=1) != 0
        b_g = tl.full([BT, BF], 1.0, acc) * gamma
        b_g_p = tl.full([BT, BF], 1.0, acc) * gamma
        if HAS_GAMMA_TENSOR:
            p_g = gamma_ptr + i_r * s_g_r + o_f[None, :] * s_g_f
            b_g = b_g * tl.load(p_g + o_t[:, None] * s_g_t, mask=m, other=0.0).to(acc)
            b_g_p = b_g_p * tl.load(p_g + o_p[:, None] * s_g_t, mask=m_prev, other=0.0).to(acc)
        b_l_p = tl.full([BT, BF], 1.0, acc) * lmbda
        if HAS_LMBDA_TENSOR:
            b_l_p = b_l_p * tl.load(lmbda_ptr + i_r * s_l_r + o_p[:, None] * s_l_t + o_f[None, :] * s_l_f,
                                    mask=m_prev, other=0.0).to(acc)

        b_disc_p = tl.where(b_done_p, 0.0, b_l_p * b_g_p)
        # [BT, BF]: maps from u at the tile's near end (t0 - 1) to u_t.
        b_a, b_b = tl.associative_scan((b_disc_p, b_grad), 0, _compose_affine)
        b_u = b_b + b_a * carry[None, :]

        o_out = out_row + o_t[:, None] * F + o_f[None, :]
        tl.store(grad_reward_ptr + o_out, b_u.to(grad_reward_ptr.dtype.element_ty), mask=m)
        tl.store(grad_next_value_ptr + o_out,
                 (tl.where(b_term, 0.0, b_g) * b_u).to(grad_next_value_ptr.dtype.element_ty), mask=m)
        tl.store(grad_value_ptr + o_out, (b_gvt - b_u).to(grad_value_ptr.dtype.element_ty), mask=m)
        carry = _row_of(b_u, o_t, tl.minimum(t0 + BT, T) - 1)
