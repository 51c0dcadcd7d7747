"""Advantage standardisation with statistics over every rank of a ``torch.distributed`` group.

Data-parallel PPO gives each rank a shard of the global minibatch. TorchRL (and BenchMARL,
RSL-RL, rl_games) standardise each shard with its own statistics, so N ranks train another
objective than one process on the same samples. :func:`standardize_across` standardises with
the statistics of the union, per group of the dims TorchRL keeps (``exclude_dims``: the agent
dim for ``MAPPOLoss``), with TorchRL's definitions: the mean, the *unbiased* std, clamped at
1e-6 (``ADVANTAGE_STD_EPS``).

How, and why this way:

- Each rank computes per-group Welford partials ``(count, mean, M2)`` of its shard (``M2`` the
  sum of squared deviations from the shard's own mean) and one ``all_gather`` collects the
  ``[W, 3, *K]`` partials of the ``W`` ranks. Every rank then merges the same gathered tensor
  in the same order with the W-way form of Chan et al.'s update,
  ``n = Σ n_w``, ``mean = Σ n_w mean_w / n``, ``M2 = Σ M2_w + Σ n_w (mean_w - mean)²``,
  which is exact in exact arithmetic and adds no cancellation: every term is a sum of squares
  about a mean. An ``all_reduce`` of ``(n, Σa, Σa²)`` would also be one collective, but
  ``Σa² - (Σa)²/n`` cancels catastrophically in float32 once the mean is large against the
  std (an advantage of 1000 ± 1 loses every digit of the variance); shifted sums would need
  a shift every rank agrees on, i.e. a second collective. Gathering the partials costs
  ``3 × W × groups`` numbers (tiny) and keeps the merge local and deterministic.
- The collective is ``torch.distributed._functional_collectives``' (through
  ``fastmarl._compat``): ``torch.compile`` traces it into the graph, and it has autograd
  (its backward is a reduce-scatter with sum), so an advantage that requires grad gets the
  gradient through the merged mean and std: the gradient that reaches rank ``r``'s advantage
  is that of the *sum* of every rank's loss. Averaging the parameters' gradients over the
  ranks (``fastmarl.UpdateStep(process_group=...)``) divides it by ``W``, which is the
  gradient of the mean loss over the union, what one process on the concatenated minibatch
  computes (for equal shard sizes and ``reduction="mean"``). Every rank must then run the
  backward (the reduce-scatter is a collective too).
- Nothing is read back to the host: the counts travel as tensors with the statistics, so
  shards of different sizes merge correctly with no sync.

The cost against the single-process path: the fused PPO kernels compute their statistics in
their own first pass; here the standardised advantage ``[*S, 1]`` is materialised by torch ops
(a statistics pass, a second pass for ``M2``, and the standardisation: three reads and one
write of the advantage, ``[*S]`` elements, in the accumulation dtype) and the kernels then run
with ``normalize=False``, so their own statistics pass is skipped. At MARL minibatch sizes
(400 × 3 per rank) that is a few element-wise ops against the networks' GEMMs; the collective
itself (one small all-gather per loss call, latency-bound) is the larger cost on a fast network.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fastmarl import _compat
from fastmarl.ops.dtypes import accumulate_dtype
from fastmarl.ops.ppo.spec import ADVANTAGE_STD_EPS

__all__ = ["merge_moments", "shard_moments", "standardize_across"]


def shard_moments(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """``[3, *K]``: this shard's ``(count, mean, M2)`` over ``dims`` (``K``: ``x``'s shape with
    ``dims`` kept as size 1), in ``x``'s dtype; differentiable in ``x``."""
    count = math.prod([x.shape[d] for d in dims])
    mean = x.mean(dims, keepdim=True)
    m2 = (x - mean).square().sum(dims, keepdim=True)
    return torch.stack([torch.full_like(mean, count), mean, m2])


def merge_moments(moments: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(count, mean, M2)`` of the union of the shards whose :func:`shard_moments` are the rows of
    ``moments`` ``[W, 3, *K]`` (the W-way form of Chan et al.'s pairwise update)."""
    counts, means, m2s = moments.unbind(1)
    n = counts.sum(0)
    mean = (counts * means).sum(0) / n
    m2 = m2s.sum(0) + (counts * (means - mean).square()).sum(0)
    return n, mean, m2


def standardize_across(advantage: Tensor, exclude_dims: tuple[int, ...], group) -> Tensor:
    """TorchRL's ``_standardize`` of ``advantage`` over every dim but ``exclude_dims`` (normalised,
    distinct, in range), with the statistics of every rank's advantage in ``group``: one
    all-gather; computed in the accumulation dtype (float32 for half and float32 inputs),
    returned in ``advantage``'s dtype.

    Every rank of ``group`` must call it (with the same ``exclude_dims`` and the same kept dims'
    sizes, e.g. the agent count); the dims reduced over may differ in size between ranks.
    """
    dims = tuple(d for d in range(advantage.ndim) if d not in exclude_dims)
    if not dims:
        return advantage  # every dim excluded: TorchRL leaves the advantage as it is
    x = advantage.to(accumulate_dtype(advantage.dtype))
    partial = shard_moments(x, dims)
    world = group.size()
    gathered = _compat.all_gather_autograd(partial, group)  # [W * 3, *K], rank order
    n, mean, m2 = merge_moments(gathered.view(world, *partial.shape))
    std = (m2 / (n - 1)).sqrt().clamp_min(ADVANTAGE_STD_EPS)
    return ((x - mean) / std).to(advantage.dtype)
