"""Triton kernels of the fused PPO-clip surrogate and the PPO critic loss.

Operands are ``[N, M]`` views: ``N`` is dim 0 of the sample shape (the dim ``ESS`` and the
explained variance reduce over), ``M`` the product of the others (for a flat minibatch
``[N, A]``, the agents). Advantage statistics are per group ``m % G`` (``G`` agents, or 1 for
global standardisation). Programs own ``[BN, BM]`` tiles of ``BN`` rows and every column
(``M <= MAX_COLUMNS``); reductions go through per-program partials.

Surrogate forward, two launches:

1. ``ppo_clip_stats_kernel``: per program and column, Welford partials of the advantage
   (count, mean, M2), log-sum-exp partials of the log-ratio for ESS (max, Σexp, Σexp²), and
   scalar partials of the KL estimate and the ratio (Σ, max); then each program takes a ticket
   and the last one merges the partials, once: the per-group mean and clamped unbiased std of
   the advantage (0 and 1 without normalisation), ESS, KL and the ratio statistics.
2. ``ppo_clip_loss_kernel``: each program reads the G group statistics, computes
   ``-min(r·A, clip(r)·A)`` for its tile, writes its loss and clip-count partials and takes a
   ticket; the last program reduces them into the loss and the clip fraction.

So every partial is read once: the merge costs O(programs), where merging the statistics in
every program of launch 2 cost O(programs²) global reads. The last program of each launch
resets its ticket to 0, so a workspace that starts zeroed stays ready for the next call
(:mod:`fastmarl.ops.ppo.triton` keeps one per device and stream).

Surrogate backward, one launch (``ppo_clip_bwd_kernel``): the gradient reaches ``log π`` only.

Critic: ``ppo_critic_kernel`` (per-element distance, value clipping, coefficient; loss and
clip-count partials; Welford partials of target and residual for the explained variance), whose
last program finalises the loss, clip fraction and explained variance; backward
``ppo_critic_bwd_kernel``.

Accumulation is fp32; offsets int64; clip bounds, clip value and coefficients are read from
0-dim tensors (a scheduled ε never recompiles and never syncs).
"""

import triton
import triton.language as tl

# The launch configuration (BN and num_warps per BM) comes from fastmarl/ops/tuning.py,
# measured per GPU architecture by bench/tune_kernels.py.
# Wider sample shapes (M > 256, e.g. an unflattened [B, T, A] batch) take the torch path.
MAX_COLUMNS = 256
# Partials are merged BLOCK_P programs at a time.
BLOCK_P = 32

# The LOSS and REDUCTION modes; the launchers (fastmarl/ops/ppo/triton.py) map TorchRL's names
# ("l1", "mean", ...) onto these and nothing else spells the numbers.
LOSS_L1 = tl.constexpr(0)
LOSS_L2 = tl.constexpr(1)
LOSS_SMOOTH_L1 = tl.constexpr(2)
REDUCE_MEAN = tl.constexpr(0)
REDUCE_SUM = tl.constexpr(1)
REDUCE_NONE = tl.constexpr(2)
# Sizes are never specialised (do_not_specialize): a new minibatch size must not recompile, and
# Triton would otherwise turn a size of 1 into a constexpr.


def ppo_block_m(num_columns: int) -> int:
    """``BM``: every column, rounded up to a power of two."""
    return triton.next_power_of_2(max(int(num_columns), 1))


@triton.jit
def _load_tile(ptr, o_n, o_m, s_n, s_m, mask):
    # A [BN, BM] tile of a strided [N, M] operand, in fp32 (masked lanes read as 0).
    return tl.load(ptr + o_n[:, None] * s_n + o_m[None, :] * s_m, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _welford_columns(x, mask):
    # Per-column (count, mean, M2) of a [BN, BM] tile, two-pass within the tile.
    count = tl.sum(mask.to(tl.float32), axis=0)
    mean = tl.sum(tl.where(mask, x, 0.0), axis=0) / tl.maximum(count, 1.0)
    dev = tl.where(mask, x - mean[None, :], 0.0)
    return count, mean, tl.sum(dev * dev, axis=0)


@triton.jit
def _merge_welford(p_count, p_mean, p_m2, n_parts, M, o_m, m_m, BLOCK_P: tl.constexpr, BM: tl.constexpr):
    # Chan's merge of [n_parts, M] column partials: per-column (count, mean, M2), each [BM].
    count = tl.zeros([BM], dtype=tl.float32)
    total = tl.zeros([BM], dtype=tl.float32)
    for p0 in range(0, n_parts, BLOCK_P):
        o_p = p0 + tl.arange(0, BLOCK_P)
        m = (o_p < n_parts)[:, None] & m_m[None, :]
        offs = o_p[:, None] * M + o_m[None, :]
        c = tl.load(p_count + offs, mask=m, other=0.0)
        count += tl.sum(c, axis=0)
        total += tl.sum(c * tl.load(p_mean + offs, mask=m, other=0.0), axis=0)
    mean = total / tl.maximum(count, 1.0)
    m2 = tl.zeros([BM], dtype=tl.float32)
    for p0 in range(0, n_parts, BLOCK_P):
        o_p = p0 + tl.arange(0, BLOCK_P)
        m = (o_p < n_parts)[:, None] & m_m[None, :]
        offs = o_p[:, None] * M + o_m[None, :]
        c = tl.load(p_count + offs, mask=m, other=0.0)
        d = tl.load(p_mean + offs, mask=m, other=0.0) - mean[None, :]
        m2 += tl.sum(tl.load(p_m2 + offs, mask=m, other=0.0) + c * d * d, axis=0)
    return count, mean, m2


@triton.jit
def _group_stats(p_count_ptr, p_mean_ptr, p_m2_ptr, n_parts, M, G, o_m, m_m, eps,
                 BLOCK_P: tl.constexpr, BM: tl.constexpr, BG: tl.constexpr):
    # Per-column mean and clamped unbiased std of the column's group (m % G), each [BM], and
    # the same per group, each [BG].
    count, mean, m2 = _merge_welford(p_count_ptr, p_mean_ptr, p_m2_ptr, n_parts, M, o_m, m_m, BLOCK_P, BM)
    o_g = tl.arange(0, BG)
    one_hot = ((o_m[:, None] % G) == o_g[None, :]) & m_m[:, None]  # [BM, BG]
    g_count = tl.sum(tl.where(one_hot, count[:, None], 0.0), axis=0)
    g_mean = tl.sum(tl.where(one_hot, (count * mean)[:, None], 0.0), axis=0) / tl.maximum(g_count, 1.0)
    c_gmean = tl.sum(tl.where(one_hot, g_mean[None, :], 0.0), axis=1)
    d = mean - c_gmean
    g_m2 = tl.sum(tl.where(one_hot, (m2 + count * d * d)[:, None], 0.0), axis=0)
    # Unbiased, like torch.std: one element gives 0/0 = NaN, which the clamp keeps (as TorchRL).
    g_std = tl.sqrt(g_m2 / (g_count - 1.0))
    g_std = tl.where(g_std != g_std, g_std, tl.maximum(g_std, eps))
    c_gstd = tl.sum(tl.where(one_hot, g_std[None, :], 0.0), axis=1)
    return c_gmean, c_gstd, g_mean, g_std


@triton.jit
def _load_clip_bounds(clip_low_ptr, clip_high_ptr):
    return tl.load(clip_low_ptr).to(tl.float32), tl.load(clip_high_ptr).to(tl.float32)


@triton.jit
def _merge_clip_stats(
    p_count_ptr, p_mean_ptr, p_m2_ptr, p_lw_max_ptr, p_s1_ptr, p_s2_ptr,
    p_kl_ptr, p_ratio_sum_ptr, p_ratio_max_ptr,
    kl_ptr, ess_ptr, max_ratio_ptr, mean_ratio_ptr, adv_mean_ptr, adv_std_ptr, advantage_ptr,
    N, M, G, n_parts, eps, o_m, m_m, s_a_m,
    BM: tl.constexpr, BG: tl.constexpr, BLOCK_P: tl.constexpr, NORMALIZE: tl.constexpr,
):
    # The last stats program: every partial, read once.
    numel = tl.cast(N * M, tl.float32)
    o_g = tl.arange(0, BG)
    if NORMALIZE:
        _, _, g_mean, g_std = _group_stats(
            p_count_ptr, p_mean_ptr, p_m2_ptr, n_parts, M, G, o_m, m_m, eps, BLOCK_P, BM, BG)
        # The partials are of the advantage shifted by its group's first sample: add it back.
        g_shift = tl.load(advantage_ptr + o_g.to(tl.int64) * s_a_m, mask=o_g < G, other=0.0).to(tl.float32)
        tl.store(adv_mean_ptr + o_g, g_shift + g_mean, mask=o_g < G)
        tl.store(adv_std_ptr + o_g, g_std, mask=o_g < G)
    else:
        tl.store(adv_mean_ptr + o_g, tl.zeros([BG], dtype=tl.float32), mask=o_g < G)
        tl.store(adv_std_ptr + o_g, tl.full([BG], 1.0, tl.float32), mask=o_g < G)
    # ESS per column from the shifted partials: s1² / s2 after a common shift.
    lw_max = tl.full([BM], float("-inf"), tl.float32)
    for p0 in range(0, n_parts, BLOCK_P):
        o_p = p0 + tl.arange(0, BLOCK_P)
        mp = (o_p < n_parts)[:, None] & m_m[None, :]
        part = tl.load(p_lw_max_ptr + o_p[:, None] * M + o_m[None, :], mask=mp, other=float("-inf"))
        lw_max = tl.maximum(lw_max, tl.max(part, axis=0))
    top = tl.where(lw_max == float("-inf"), 0.0, lw_max)
    s1 = tl.zeros([BM], dtype=tl.float32)
    s2 = tl.zeros([BM], dtype=tl.float32)
    for p0 in range(0, n_parts, BLOCK_P):
        o_p = p0 + tl.arange(0, BLOCK_P)
        mp = (o_p < n_parts)[:, None] & m_m[None, :]
        offs = o_p[:, None] * M + o_m[None, :]
        part_max = tl.load(p_lw_max_ptr + offs, mask=mp, other=float("-inf"))
        part_shift = tl.where(part_max == float("-inf"), 0.0, part_max)
        w = tl.where(mp, tl.exp(part_shift - top[None, :]), 0.0)
        s1 += tl.sum(w * tl.load(p_s1_ptr + offs, mask=mp, other=0.0), axis=0)
        s2 += tl.sum(w * w * tl.load(p_s2_ptr + offs, mask=mp, other=0.0), axis=0)
    tl.store(ess_ptr + o_m, (s1 * s1 / s2 / tl.cast(N, tl.float32)).to(ess_ptr.dtype.element_ty), mask=m_m)
    kl = tl.zeros([BLOCK_P], dtype=tl.float32)
    ratio_sum = tl.zeros([BLOCK_P], dtype=tl.float32)
    ratio_max = tl.full([BLOCK_P], float("-inf"), tl.float32)
    for p0 in range(0, n_parts, BLOCK_P):
        o_p = p0 + tl.arange(0, BLOCK_P)
        mp = o_p < n_parts
        kl += tl.load(p_kl_ptr + o_p, mask=mp, other=0.0)
        ratio_sum += tl.load(p_ratio_sum_ptr + o_p, mask=mp, other=0.0)
        ratio_max = tl.maximum(ratio_max, tl.load(p_ratio_max_ptr + o_p, mask=mp, other=float("-inf")))
    tl.store(kl_ptr, (tl.sum(kl, axis=0) / numel).to(kl_ptr.dtype.element_ty))
    tl.store(mean_ratio_ptr, (tl.sum(ratio_sum, axis=0) / numel).to(mean_ratio_ptr.dtype.element_ty))
    tl.store(max_ratio_ptr, tl.max(ratio_max, axis=0).to(max_ratio_ptr.dtype.element_ty))


@triton.jit
def _reduce_loss_and_clip_partials(p_loss_ptr, p_clip_ptr, n_parts, numel, loss_ptr, clip_fraction_ptr,
                                   BLOCK_P: tl.constexpr, REDUCTION: tl.constexpr, HAS_CLIP: tl.constexpr):
    # The last program's finish, shared by the clip and critic kernels: the per-program loss and
    # clip-count partials summed and stored (a clip fraction of 0 without clipping).
    total = tl.zeros([BLOCK_P], dtype=tl.float32)
    clips = tl.zeros([BLOCK_P], dtype=tl.float32)
    for p0 in range(0, n_parts, BLOCK_P):
        o_p = p0 + tl.arange(0, BLOCK_P)
        mp = o_p < n_parts
        if REDUCTION != REDUCE_NONE:
            total += tl.load(p_loss_ptr + o_p, mask=mp, other=0.0)
        if HAS_CLIP:
            clips += tl.load(p_clip_ptr + o_p, mask=mp, other=0.0)
    if REDUCTION == REDUCE_MEAN:
        tl.store(loss_ptr, (tl.sum(total, axis=0) / numel).to(loss_ptr.dtype.element_ty))
    elif REDUCTION == REDUCE_SUM:
        tl.store(loss_ptr, tl.sum(total, axis=0).to(loss_ptr.dtype.element_ty))
    tl.store(clip_fraction_ptr, (tl.sum(clips, axis=0) / numel).to(clip_fraction_ptr.dtype.element_ty))


@triton.jit(do_not_specialize=["N", "M", "G", "n_parts"])
def ppo_clip_stats_kernel(
    log_prob_ptr, prev_log_prob_ptr, advantage_ptr,
    p_count_ptr, p_mean_ptr, p_m2_ptr, p_lw_max_ptr, p_s1_ptr, p_s2_ptr,
    p_kl_ptr, p_ratio_sum_ptr, p_ratio_max_ptr, ticket_ptr,
    kl_ptr, ess_ptr, max_ratio_ptr, mean_ratio_ptr, adv_mean_ptr, adv_std_ptr,
    N, M, G, n_parts, eps,
    s_lp_n, s_lp_m, s_pv_n, s_pv_m, s_a_n, s_a_m,
    BN: tl.constexpr, BM: tl.constexpr, BG: tl.constexpr, BLOCK_P: tl.constexpr,
    NORMALIZE: tl.constexpr,
):
    i_p = tl.program_id(0)
    o_n = (i_p * BN + tl.arange(0, BN)).to(tl.int64)
    o_m = tl.arange(0, BM)
    m_n = o_n < N
    m_m = o_m < M
    m = m_n[:, None] & m_m[None, :]
    o_m64 = o_m.to(tl.int64)
    b_lp = _load_tile(log_prob_ptr, o_n, o_m64, s_lp_n, s_lp_m, m)
    b_pv = _load_tile(prev_log_prob_ptr, o_n, o_m64, s_pv_n, s_pv_m, m)
    b_lw = b_lp - b_pv
    o_part = i_p * M + o_m

    if NORMALIZE:
        # Statistics of the advantage shifted by its group's first sample (row 0, column m % G):
        # a constant advantage then has mean exactly c + 0 and standardises to exactly 0 (a
        # plain float32 mean of 0.7s rounds, and the 1e-6 std clamp turned that into +0.437).
        b_shift = tl.load(advantage_ptr + (o_m64 % G) * s_a_m, mask=m_m, other=0.0).to(tl.float32)
        b_a = _load_tile(advantage_ptr, o_n, o_m64, s_a_n, s_a_m, m) - b_shift[None, :]
        count, mean, m2 = _welford_columns(b_a, m)
        tl.store(p_count_ptr + o_part, count, mask=m_m)
        tl.store(p_mean_ptr + o_part, mean, mask=m_m)
        tl.store(p_m2_ptr + o_part, m2, mask=m_m)

    # ESS = exp(2 logsumexp(lw) - logsumexp(2 lw)) per column: shifted sums by the block max.
    lw_max = tl.max(tl.where(m, b_lw, float("-inf")), axis=0)
    shift = tl.where(lw_max == float("-inf"), 0.0, lw_max)
    e = tl.where(m, tl.exp(b_lw - shift[None, :]), 0.0)
    tl.store(p_lw_max_ptr + o_part, lw_max, mask=m_m)
    tl.store(p_s1_ptr + o_part, tl.sum(e, axis=0), mask=m_m)
    tl.store(p_s2_ptr + o_part, tl.sum(e * e, axis=0), mask=m_m)

    ratio = tl.where(m, tl.exp(b_lw), 0.0)
    tl.store(p_kl_ptr + i_p, tl.sum(tl.sum(tl.where(m, -b_lw, 0.0), axis=1), axis=0))
    tl.store(p_ratio_sum_ptr + i_p, tl.sum(tl.sum(ratio, axis=1), axis=0))
    tl.store(p_ratio_max_ptr + i_p, tl.max(tl.max(tl.where(m, ratio, float("-inf")), axis=1), axis=0))

    # Every thread's partial stores come before the ticket (the barrier), and the acq_rel atomic
    # orders them before the last program's reads.
    tl.debug_barrier()
    ticket = tl.atomic_add(ticket_ptr, 1)
    if ticket == n_parts - 1:
        _merge_clip_stats(
            p_count_ptr, p_mean_ptr, p_m2_ptr, p_lw_max_ptr, p_s1_ptr, p_s2_ptr,
            p_kl_ptr, p_ratio_sum_ptr, p_ratio_max_ptr,
            kl_ptr, ess_ptr, max_ratio_ptr, mean_ratio_ptr, adv_mean_ptr, adv_std_ptr, advantage_ptr,
            N, M, G, n_parts, eps, o_m, m_m, s_a_m, BM, BG, BLOCK_P, NORMALIZE)
        # Ready for the next call on this workspace.
        tl.store(ticket_ptr, 0)


@triton.jit(do_not_specialize=["N", "M", "G", "n_parts"])
def ppo_clip_loss_kernel(
    log_prob_ptr, prev_log_prob_ptr, advantage_ptr, clip_low_ptr, clip_high_ptr,
    adv_mean_ptr, adv_std_ptr, p_loss_ptr, p_clip_ptr, ticket_ptr,
    loss_ptr, clip_fraction_ptr,
    N, M, G, n_parts,
    s_lp_n, s_lp_m, s_pv_n, s_pv_m, s_a_n, s_a_m,
    BN: tl.constexpr, BM: tl.constexpr, BLOCK_P: tl.constexpr, REDUCTION: tl.constexpr,
):
    i_p = tl.program_id(0)
    o_n = (i_p * BN + tl.arange(0, BN)).to(tl.int64)
    o_m = tl.arange(0, BM)
    m_n = o_n < N
    m_m = o_m < M
    m = m_n[:, None] & m_m[None, :]
    o_m64 = o_m.to(tl.int64)
    numel = tl.cast(N * M, tl.float32)
    clip_low, clip_high = _load_clip_bounds(clip_low_ptr, clip_high_ptr)

    # The group statistics launch 1 merged (0 and 1 without normalisation: exact no-ops).
    c_mean = tl.load(adv_mean_ptr + o_m % G, mask=m_m, other=0.0)
    c_std = tl.load(adv_std_ptr + o_m % G, mask=m_m, other=1.0)
    b_a = _load_tile(advantage_ptr, o_n, o_m64, s_a_n, s_a_m, m)
    b_a = (b_a - c_mean[None, :]) / c_std[None, :]
    b_lp = _load_tile(log_prob_ptr, o_n, o_m64, s_lp_n, s_lp_m, m)
    b_pv = _load_tile(prev_log_prob_ptr, o_n, o_m64, s_pv_n, s_pv_m, m)
    b_lw = b_lp - b_pv
    b_lw_clip = tl.minimum(tl.maximum(b_lw, clip_low), clip_high)
    gain1 = tl.exp(b_lw) * b_a
    gain2 = tl.exp(b_lw_clip) * b_a
    # torch.stack([gain1, gain2]).min(-1): the first minimum, NaN wins.
    gain = tl.where((gain1 <= gain2) | (gain1 != gain1), gain1, gain2)
    loss = tl.where(m, -gain, 0.0)
    clipped = m & (b_lw_clip != b_lw)
    if REDUCTION == REDUCE_NONE:
        tl.store(loss_ptr + o_n[:, None] * M + o_m64[None, :], loss.to(loss_ptr.dtype.element_ty), mask=m)
    else:
        tl.store(p_loss_ptr + i_p, tl.sum(tl.sum(loss, axis=1), axis=0))
    tl.store(p_clip_ptr + i_p, tl.sum(tl.sum(clipped.to(tl.float32), axis=1), axis=0))

    # The last program to finish reduces the loss and clip partials (see ppo_clip_stats_kernel
    # for the ordering).
    tl.debug_barrier()
    ticket = tl.atomic_add(ticket_ptr, 1)
    if ticket == n_parts - 1:
        _reduce_loss_and_clip_partials(p_loss_ptr, p_clip_ptr, n_parts, numel, loss_ptr, clip_fraction_ptr,
                                       BLOCK_P, REDUCTION, True)
        tl.store(ticket_ptr, 0)


@triton.jit(do_not_specialize=["N", "M", "G"])
def ppo_clip_bwd_kernel(
    grad_loss_ptr, log_prob_ptr, prev_log_prob_ptr, advantage_ptr, clip_low_ptr, clip_high_ptr,
    adv_mean_ptr, adv_std_ptr, grad_log_prob_ptr,
    N, M, G,
    s_lp_n, s_lp_m, s_pv_n, s_pv_m, s_a_n, s_a_m, s_g_n, s_g_m,
    BN: tl.constexpr, BM: tl.constexpr, REDUCTION: tl.constexpr,
):
    i_p = tl.program_id(0)
    o_n = (i_p * BN + tl.arange(0, BN)).to(tl.int64)
    o_m = tl.arange(0, BM)
    m = (o_n < N)[:, None] & (o_m < M)[None, :]
    o_m64 = o_m.to(tl.int64)
    clip_low, clip_high = _load_clip_bounds(clip_low_ptr, clip_high_ptr)
    c_mean = tl.load(adv_mean_ptr + o_m % G, mask=o_m < M, other=0.0)
    c_std = tl.load(adv_std_ptr + o_m % G, mask=o_m < M, other=1.0)
    b_a = _load_tile(advantage_ptr, o_n, o_m64, s_a_n, s_a_m, m)
    b_a = (b_a - c_mean[None, :]) / c_std[None, :]
    b_lp = _load_tile(log_prob_ptr, o_n, o_m64, s_lp_n, s_lp_m, m)
    b_pv = _load_tile(prev_log_prob_ptr, o_n, o_m64, s_pv_n, s_pv_m, m)
    b_lw = b_lp - b_pv
    gain1 = tl.exp(b_lw) * b_a
    gain2 = tl.exp(tl.minimum(tl.maximum(b_lw, clip_low), clip_high)) * b_a
    first = (gain1 <= gain2) | (gain1 != gain1)
    inside = (b_lw >= clip_low) & (b_lw <= clip_high)
    d_gain = tl.where(first, gain1, tl.where(inside, gain2, 0.0))
    if REDUCTION == REDUCE_NONE:
        b_g = _load_tile(grad_loss_ptr, o_n, o_m64, s_g_n, s_g_m, m)
    else:
        b_g = tl.load(grad_loss_ptr).to(tl.float32)
        if REDUCTION == REDUCE_MEAN:
            b_g = b_g / tl.cast(N * M, tl.float32)
    grad = -b_g * d_gain
    tl.store(grad_log_prob_ptr + o_n[:, None] * M + o_m64[None, :], grad.to(grad_log_prob_ptr.dtype.element_ty), mask=m)


@triton.jit
def _distance(target, value, LOSS: tl.constexpr):
    diff = target - value
    if LOSS == LOSS_L1:
        return tl.abs(diff)
    elif LOSS == LOSS_L2:
        return diff * diff
    else:
        ad = tl.abs(diff)
        return tl.where(ad < 1.0, 0.5 * diff * diff, ad - 0.5)


@triton.jit
def _distance_grad(target, value, LOSS: tl.constexpr):
    # d distance / d value, with torch's conventions at the kinks (sign(0) = 0, |d| = 1 linear).
    diff = value - target
    sign = tl.where(diff > 0, 1.0, tl.where(diff < 0, -1.0, 0.0))
    if LOSS == LOSS_L1:
        return sign
    elif LOSS == LOSS_L2:
        return 2.0 * diff
    else:
        return tl.where(tl.abs(diff) < 1.0, diff, sign)


@triton.jit(do_not_specialize=["N", "M", "n_parts"])
def ppo_critic_kernel(
    value_ptr, target_ptr, old_value_ptr, clip_value_ptr, coeff_ptr,
    loss_ptr, clip_fraction_ptr, explained_variance_ptr,
    p_loss_ptr, p_clip_ptr, p_t_count_ptr, p_t_mean_ptr, p_t_m2_ptr, p_r_mean_ptr, p_r_m2_ptr, ticket_ptr,
    N, M, n_parts, eps,
    s_v_n, s_v_m, s_t_n, s_t_m, s_o_n, s_o_m,
    BN: tl.constexpr, BM: tl.constexpr, BLOCK_P: tl.constexpr, LOSS: tl.constexpr,
    REDUCTION: tl.constexpr, HAS_CLIP: tl.constexpr, HAS_COEFF: tl.constexpr,
    EXPLAINED_VARIANCE: tl.constexpr,
):
    i_p = tl.program_id(0)
    o_n = (i_p * BN + tl.arange(0, BN)).to(tl.int64)
    o_m = tl.arange(0, BM)
    m_m = o_m < M
    m = (o_n < N)[:, None] & m_m[None, :]
    o_m64 = o_m.to(tl.int64)
    b_v = _load_tile(value_ptr, o_n, o_m64, s_v_n, s_v_m, m)
    b_t = _load_tile(target_ptr, o_n, o_m64, s_t_n, s_t_m, m)
    loss = _distance(b_t, b_v, LOSS)
    if HAS_CLIP:
        clip = tl.load(clip_value_ptr).to(tl.float32)
        b_o = _load_tile(old_value_ptr, o_n, o_m64, s_o_n, s_o_m, m)
        pre = b_v - b_o
        clipped = tl.minimum(tl.maximum(pre, -clip), clip)
        loss = tl.maximum(loss, _distance(b_t, b_o + clipped, LOSS))
        tl.store(p_clip_ptr + i_p, tl.sum(tl.sum((m & (pre != clipped)).to(tl.float32), axis=1), axis=0))
    if HAS_COEFF:
        loss = tl.load(coeff_ptr).to(tl.float32) * loss
    loss = tl.where(m, loss, 0.0)
    if REDUCTION == REDUCE_NONE:
        tl.store(loss_ptr + o_n[:, None] * M + o_m64[None, :], loss.to(loss_ptr.dtype.element_ty), mask=m)
    else:
        tl.store(p_loss_ptr + i_p, tl.sum(tl.sum(loss, axis=1), axis=0))
    if EXPLAINED_VARIANCE:
        o_part = i_p * M + o_m
        count, t_mean, t_m2 = _welford_columns(b_t, m)
        _, r_mean, r_m2 = _welford_columns(b_t - b_v, m)
        tl.store(p_t_count_ptr + o_part, count, mask=m_m)
        tl.store(p_t_mean_ptr + o_part, t_mean, mask=m_m)
        tl.store(p_t_m2_ptr + o_part, t_m2, mask=m_m)
        tl.store(p_r_mean_ptr + o_part, r_mean, mask=m_m)
        tl.store(p_r_m2_ptr + o_part, r_m2, mask=m_m)

    # The last program finalises (see ppo_clip_stats_kernel for the ordering): one launch
    # instead of a separate one-program finalize kernel.
    tl.debug_barrier()
    ticket = tl.atomic_add(ticket_ptr, 1)
    if ticket == n_parts - 1:
        numel = tl.cast(N * M, tl.float32)
        _reduce_loss_and_clip_partials(p_loss_ptr, p_clip_ptr, n_parts, numel, loss_ptr, clip_fraction_ptr,
                                       BLOCK_P, REDUCTION, HAS_CLIP)
        if EXPLAINED_VARIANCE:
            count, _, t_m2 = _merge_welford(p_t_count_ptr, p_t_mean_ptr, p_t_m2_ptr, n_parts, M, o_m, m_m, BLOCK_P, BM)
            _, _, r_m2 = _merge_welford(p_t_count_ptr, p_r_mean_ptr, p_r_m2_ptr, n_parts, M, o_m, m_m, BLOCK_P, BM)
            # Population variances (correction=0), as TorchRL: 1 - var(t - v) / (var(t) + eps).
            ev = 1.0 - (r_m2 / count) / (t_m2 / count + eps)
            tl.store(explained_variance_ptr + o_m, ev.to(explained_variance_ptr.dtype.element_ty), mask=m_m)
        tl.store(ticket_ptr, 0)


@triton.jit(do_not_specialize=["N", "M"])
def ppo_critic_bwd_kernel(
    grad_loss_ptr, value_ptr, target_ptr, old_value_ptr, clip_value_ptr, coeff_ptr, grad_value_ptr,
    N, M,
    s_v_n, s_v_m, s_t_n, s_t_m, s_o_n, s_o_m, s_g_n, s_g_m,
    BN: tl.constexpr, BM: tl.constexpr, LOSS: tl.constexpr, REDUCTION: tl.constexpr,
    HAS_CLIP: tl.constexpr, HAS_COEFF: tl.constexpr,
):
    i_p = tl.program_id(0)
    o_n = (i_p * BN + tl.arange(0, BN)).to(tl.int64)
    o_m = tl.arange(0, BM)
    m = (o_n < N)[:, None] & (o_m < M)[None, :]
    o_m64 = o_m.to(tl.int64)
    b_v = _load_tile(value_ptr, o_n, o_m64, s_v_n, s_v_m, m)
    b_t = _load_tile(target_ptr, o_n, o_m64, s_t_n, s_t_m, m)
    d_loss = _distance_grad(b_t, b_v, LOSS)
    if HAS_CLIP:
        clip = tl.load(clip_value_ptr).to(tl.float32)
        b_o = _load_tile(old_value_ptr, o_n, o_m64, s_o_n, s_o_m, m)
        pre = b_v - b_o
        v_clip = b_o + tl.minimum(tl.maximum(pre, -clip), clip)
        loss = _distance(b_t, b_v, LOSS)
        loss_clipped = _distance(b_t, v_clip, LOSS)
        inside = (pre >= -clip) & (pre <= clip)
        d_clip = tl.where(inside, _distance_grad(b_t, v_clip, LOSS), 0.0)
        # torch.maximum splits the gradient evenly on ties.
        d_loss = tl.where(loss > loss_clipped, d_loss,
                          tl.where(loss < loss_clipped, d_clip, 0.5 * (d_loss + d_clip)))
    if HAS_COEFF:
        d_loss = tl.load(coeff_ptr).to(tl.float32) * d_loss
    if REDUCTION == REDUCE_NONE:
        b_g = _load_tile(grad_loss_ptr, o_n, o_m64, s_g_n, s_g_m, m)
    else:
        b_g = tl.load(grad_loss_ptr).to(tl.float32)
        if REDUCTION == REDUCE_MEAN:
            b_g = b_g / tl.cast(N * M, tl.float32)
    tl.store(grad_value_ptr + o_n[:, None] * M + o_m64[None, :], (b_g * d_loss).to(grad_value_ptr.dtype.element_ty), mask=m)
