"""Property-based tests: GAE, the PPO surrogate and critic losses and the QMIX mixer against their
float64 oracles (``fastmarl/ops/<op>/naive.py``) on inputs hypothesis draws.

What varies: shapes (batch, time and feature dims, including size 1), ``time_dim``, memory
layouts (transposed, sliced, expanded to stride 0), dtypes (float64, float32, bfloat16,
float16), flags and done patterns, γ/λ/ε (0 and 1 included), normalisation and its excluded
dims, reductions, value clipping, the path (the policy, or each path forced through
:func:`fastmarl.ops.force_path`), and sizes on both sides of every size threshold of the path
policies and the CPU kernels' chunking (``EAGER_FUSED_MIN_ELEMENTS``, ``SMALL_BATCH``,
``SMALL_FORWARD_WORK``, the GAE and QMIX ``CPU_CHUNK_ELEMENTS``).

The oracle runs in float64 on the very values the op reads (half inputs upcast exactly), so the
tolerance is what the op's arithmetic explains: float64 ulps, float32 accumulation over the
sizes drawn, or one rounding of a half-precision result computed in float32.

Runs are derandomized (``derandomize=True``, no example database: a given commit and command
draw the same examples; hypothesis also mixes in constants it reads from the local source, so a
code change can shift them) and bounded (``max_examples`` per test below) so that the file adds under a minute to
CI on a quiet 2-core machine. ``FASTMARL_HYPOTHESIS_EXAMPLES=<n>`` multiplies every count by
``n`` for a longer local search, ``FASTMARL_HYPOTHESIS_RANDOM=1`` draws new examples each run
(with ``--hypothesis-seed=<s>`` to replay one).
"""

from __future__ import annotations

import math
import os

import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from fastmarl.functional import (
    clip_bounds,
    generalized_advantage_estimate,
    ppo_clip_loss,
    ppo_critic_loss,
    qmix_mixer,
)
from fastmarl.ops import force_path
from fastmarl.ops.gae.cpu import CPU_CHUNK_ELEMENTS as GAE_CHUNK_ELEMENTS
from fastmarl.ops.gae.naive import gae as gae_oracle
from fastmarl.ops.ppo.naive import ppo_clip as clip_oracle
from fastmarl.ops.ppo.naive import ppo_critic as critic_oracle
from fastmarl.ops.ppo.op import EAGER_FUSED_MIN_ELEMENTS
from fastmarl.ops.qmix import QMixParams
from fastmarl.ops.qmix.cpu import CPU_CHUNK_ELEMENTS as QMIX_CHUNK_ELEMENTS
from fastmarl.ops.qmix.naive import qmix as qmix_oracle
from fastmarl.ops.qmix.op import SMALL_BATCH, SMALL_FORWARD_WORK

SCALE = int(os.environ.get("FASTMARL_HYPOTHESIS_EXAMPLES", "1"))
RANDOM = os.environ.get("FASTMARL_HYPOTHESIS_RANDOM", "0") == "1"


def _settings(examples: int):
    return settings(max_examples=examples * SCALE, deadline=None, derandomize=not RANDOM, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


FLOATS = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
LAYOUTS = ["contiguous", "transposed", "sliced", "expanded"]


def _tensor(values: torch.Tensor, layout: str, dtype: torch.dtype, expand_dim: int | None = None) -> torch.Tensor:
    """``values`` (float64) in ``dtype`` with the memory ``layout``; ``expanded`` makes dim
    ``expand_dim`` (one of size > 1) a stride-0 broadcast of its first slice."""
    x = values.to(dtype)
    if layout == "transposed" and x.ndim >= 2:
        return x.permute(*reversed(range(x.ndim))).contiguous().permute(*reversed(range(x.ndim)))
    if layout == "sliced" and x.ndim >= 1:
        wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=dtype)
        wide[..., ::2] = x
        return wide[..., ::2]
    if layout == "expanded" and expand_dim is not None and x.shape[expand_dim] > 1:
        return x.narrow(expand_dim, 0, 1).expand(x.shape)
    return x


def _close(actual: torch.Tensor, expected: torch.Tensor, *, rtol: float, atol: float, name: str,
           mask: torch.Tensor | None = None) -> None:
    """``|actual - expected| <= rtol * |expected| + atol`` elementwise (where ``mask``)."""
    a = actual.detach().to(torch.float64)
    e = expected.detach().to(torch.float64)
    # A result beyond the dtype's range (a float16 sum of 65535 squares) must be inf, as
    # rounding the exact value would give.
    e = torch.where(e.abs() > torch.finfo(actual.dtype).max, e.to(actual.dtype).double(), e)
    assert a.shape == e.shape, f"{name}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    bad = ~((a - e).abs() <= rtol * e.abs() + atol)
    bad &= ~(a.isnan() & e.isnan()) & ~((a == e) & a.isinf())
    if mask is not None:
        bad &= mask
    if bad.any():
        i = tuple(bad.nonzero()[0].tolist())
        raise AssertionError(f"{name}: {int(bad.sum())}/{bad.numel()} beyond rtol={rtol:.3g}, "
                             f"atol={atol:.3g}; first at {i}: {a[i].item():.9g} vs {e[i].item():.9g}")


def _tolerance(dtype: torch.dtype, steps: int) -> tuple[float, float]:
    """``(rtol, atol / scale)`` for a result in ``dtype`` computed in float32 (float64 for float64)
    over ``steps`` dependent operations: the accumulation's error, plus one rounding to a half
    dtype (half an ulp: ``eps / 2`` relative)."""
    acc_eps = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
    rounding = torch.finfo(dtype).eps / 2 if dtype in (torch.float16, torch.bfloat16) else 0.0
    return rounding + 8 * acc_eps, 4 * steps * acc_eps


def _scale(x: torch.Tensor) -> float:
    x = x.detach()
    return float(x.abs().max()) + 1.0 if x.numel() else 1.0


def _path_context(path: str, *ops: str):
    from contextlib import nullcontext

    return nullcontext() if path == "policy" else force_path(path, *ops)


# --------------------------------------------------------------------------- GAE


# Rows x features of the chunk-sized GAE examples: R*F = 16384, so that T = 16 steps fill the
# CPU kernel's time chunk (CPU_CHUNK_ELEMENTS = 2**18) and 17 spill into a second one, in few
# Python steps of the oracle's loop (1024 x 257 cost ~10x more time for the same check).
GAE_CHUNK_BATCH, GAE_CHUNK_FEATURES = 64, (64, 4)


def _gae_chunk_steps(size: str) -> int:
    # T steps fill the CPU kernel's time chunk exactly ("chunk"), or spill one step ("chunk+1").
    rows_features = GAE_CHUNK_BATCH * math.prod(GAE_CHUNK_FEATURES)
    return GAE_CHUNK_ELEMENTS // rows_features + (size == "chunk+1")


def _gae_case(size, dtype, path, **changes):
    case = dict(shape=(GAE_CHUNK_BATCH, _gae_chunk_steps(size), *GAE_CHUNK_FEATURES), time_dim=1, dtype=dtype,
                layouts=["transposed", "sliced", "contiguous"], team_signals=True, pattern="truncated",
                flag_dtype=torch.bool, gamma=0.99, lmbda="tensor", path=path, seed=1)
    return {**case, **changes}


@st.composite
def gae_cases(draw):
    # Chunk-sized examples cost ~100x a small one: ~5% of the draws, plus the explicit examples.
    size = draw(st.sampled_from(["small"] * 38 + ["chunk", "chunk+1"]))
    if size == "small":
        batch = draw(st.lists(st.integers(1, 4), max_size=2))
        steps = draw(st.integers(1, 12))
        features = draw(st.lists(st.integers(1, 4), max_size=2))
    else:
        batch, features = [GAE_CHUNK_BATCH], list(GAE_CHUNK_FEATURES)
        steps = _gae_chunk_steps(size)
    shape = (*batch, steps, *features)
    t = len(batch)
    return dict(
        shape=shape, time_dim=draw(st.sampled_from([t, t - len(shape)])),
        dtype=draw(st.sampled_from(FLOATS)),
        layouts=draw(st.lists(st.sampled_from(LAYOUTS), min_size=3, max_size=3)),
        # a team reward / done shared by the last feature dim (read with stride 0)
        team_signals=draw(st.booleans()) and len(features) > 0,
        pattern=draw(st.sampled_from(["none", "all", "random", "truncated", "terminated-none"])),
        flag_dtype=draw(st.sampled_from([torch.bool, torch.uint8])),
        gamma=draw(st.one_of(st.sampled_from([0.0, 1.0, 0.99]), st.floats(0, 1), st.just("tensor"))),
        lmbda=draw(st.one_of(st.sampled_from([0.0, 1.0, 0.95]), st.floats(0, 1), st.just("tensor"))),
        path=draw(st.sampled_from(["policy", "op", "composite"])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@_settings(100)
@given(case=gae_cases())
@example(case=_gae_case("chunk", torch.float32, "op"))
@example(case=_gae_case("chunk+1", torch.float32, "op", time_dim=-3, layouts=["expanded"] * 3))
@example(case=_gae_case("chunk+1", torch.bfloat16, "policy", gamma=1.0, lmbda=1.0))
@example(case=_gae_case("chunk+1", torch.float64, "composite", pattern="none"))
def test_gae_matches_float64_oracle(case):
    shape, dtype, time_dim = case["shape"], case["dtype"], case["time_dim"]
    g = torch.Generator().manual_seed(case["seed"])
    ndim, t = len(shape), case["time_dim"] % len(shape)
    expand_dim = next((d for d in range(ndim) if d != t and shape[d] > 1), None)
    value, next_value, reward = (
        _tensor(torch.randn(shape, generator=g, dtype=torch.float64), layout, dtype, expand_dim)
        for layout in case["layouts"]
    )
    signal_shape = (*shape[:-1], 1) if case["team_signals"] else shape
    if case["team_signals"]:
        reward = reward[..., :1]
    done = torch.rand(signal_shape, generator=g) < 0.25
    pattern = case["pattern"]
    if pattern in ("none", "all"):
        done = torch.full(signal_shape, pattern == "all")
    terminated = done & (torch.rand(signal_shape, generator=g) < 0.5) if pattern == "truncated" else done
    flags = [done.to(case["flag_dtype"]), terminated.to(case["flag_dtype"])]
    if pattern == "terminated-none":
        flags[1] = None

    def discount(x, default):
        if x != "tensor":
            return x
        # per-step discounts, broadcast over the batch dims ([1, ..., T, *F])
        return torch.rand(*(1,) * t, *shape[t:], generator=g, dtype=torch.float64).to(
            torch.float64 if dtype == torch.float64 else torch.float32)

    gamma, lmbda = discount(case["gamma"], 0.99), discount(case["lmbda"], 0.95)
    grad = dtype in (torch.float32, torch.float64)
    inputs = [x.detach().requires_grad_(grad) for x in (value, next_value, reward)]
    with _path_context(case["path"], "gae"):
        adv, target = generalized_advantage_estimate(gamma, lmbda, *inputs, *flags, time_dim=time_dim)

    ref_inputs = [x.detach().to(torch.float64).expand(shape).requires_grad_(grad) for x in (value, next_value, reward)]
    ref_flags = [None if f is None else f.bool().expand(shape) for f in flags]
    f64 = [x.to(torch.float64) if isinstance(x, torch.Tensor) else x for x in (gamma, lmbda)]
    ref_adv, ref_target = gae_oracle(*f64, *ref_inputs, *ref_flags, time_dim=time_dim)
    assert adv.dtype == target.dtype == dtype and adv.shape == target.shape == shape
    rtol, atol = _tolerance(dtype, shape[t])
    _close(adv, ref_adv, rtol=rtol, atol=atol * _scale(ref_adv), name="advantage")
    _close(target, ref_target, rtol=rtol, atol=atol * _scale(ref_target), name="value_target")
    if grad:
        # cotangents the op can take exactly: rounded to its dtype first
        cot_a, cot_t = (torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).double() for _ in range(2))
        grads = torch.autograd.grad((adv * cot_a.to(dtype)).sum() + (target * cot_t.to(dtype)).sum(), inputs)
        ref_grads = torch.autograd.grad((ref_adv * cot_a).sum() + (ref_target * cot_t).sum(), ref_inputs)
        for name, a, e in zip(("value", "next_value", "reward"), grads, ref_grads):
            # the oracle's gradient of an expanded input is per element: sum it like autograd does
            e = e.sum_to_size(a.shape)
            _close(a, e, rtol=rtol, atol=atol * _scale(e), name=f"d_{name}")


# --------------------------------------------------------------------------- PPO surrogate


def _normalisation_groups_vary(advantage: torch.Tensor, exclude: tuple[int, ...]) -> bool:
    """Whether every standardisation group's std is well away from 0. A (near-)constant group
    divides the rounding of its float32 mean by a std near the 1e-6 clamp: ill-conditioned,
    so float32 cannot match the float64 oracle there. The exactly constant case is exact (0)
    and has its own tests (test_ppo.py, test_ppo_triton.py)."""
    a = advantage.detach().to(torch.float64)
    excl = {d % a.ndim for d in exclude}
    dims = tuple(d for d in range(a.ndim) if d not in excl)
    if a.numel() < 2 or not dims or math.prod(a.shape[d] for d in dims) < 2:
        return True  # nothing standardised, or groups of one (NaN std: NaN results, compared)
    std = a.std(dims) if excl else a.std()
    return bool((std > 1e-2).all())


def _threshold_shape(op: str, size: str, agents: int) -> tuple[int, int]:
    """``(N, agents)`` with N * agents just below the eager fused threshold of ``op``, or the
    smallest at or above it."""
    n = -(-EAGER_FUSED_MIN_ELEMENTS[op] // agents)
    n = n - 1 if size == "below" else n
    assert (n * agents < EAGER_FUSED_MIN_ELEMENTS[op]) == (size == "below")
    return n, agents


def _clip_case(size, dtype, path, **changes):
    case = dict(shape=_threshold_shape("ppo_clip", size, 3), dtype=dtype, layouts=["transposed", "sliced", "contiguous"],
                normalize=True, exclude=(-2,), epsilon=0.2, reduction="mean", log_ratio_scale=0.3,
                path=path, seed=1)
    return {**case, **changes}


@st.composite
def clip_cases(draw):
    size = draw(st.sampled_from(["small"] * 7 + ["below", "at"]))
    if size == "small":
        shape = (draw(st.integers(1, 40)), *draw(st.lists(st.integers(1, 4), max_size=2)))
    else:
        shape = _threshold_shape("ppo_clip", size, draw(st.sampled_from([1, 3, 8])))
    ndim = len(shape) + 1  # the advantage's
    exclude = draw(st.sampled_from([(), (-2,), (0,), (-1,), tuple(range(ndim)), (0, -2)]))
    normalised = {d % ndim for d in exclude}
    if ndim < 3 and ndim - 2 in normalised and len(normalised) < ndim:
        # excluding the agent dim of an advantage without one: a clear error (test_ppo.py)
        exclude = ()
    epsilon = draw(st.one_of(
        st.floats(0, 0.95), st.just(0.0),
        st.tuples(st.floats(0, 0.95), st.floats(0, 3)),
        st.just("tensor"),
    ))
    return dict(
        shape=shape, dtype=draw(st.sampled_from(FLOATS)),
        layouts=draw(st.lists(st.sampled_from(LAYOUTS), min_size=3, max_size=3)),
        normalize=draw(st.booleans()), exclude=exclude, epsilon=epsilon,
        reduction=draw(st.sampled_from(["mean", "sum", "none"])),
        log_ratio_scale=draw(st.sampled_from([0.05, 0.3, 2.0])),
        path=draw(st.sampled_from(["policy", "op", "fused", "composite"])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@_settings(150)
@given(case=clip_cases())
@example(case=_clip_case("below", torch.float32, "policy"))  # the composite path
@example(case=_clip_case("at", torch.float32, "policy"))  # the fused kernels
@example(case=_clip_case("below", torch.bfloat16, "policy", reduction="none", normalize=False))
@example(case=_clip_case("below", torch.bfloat16, "fused", shape=(400, 3)))
@example(case=_clip_case("at", torch.float16, "op", epsilon=(0.1, 0.3), exclude=()))
# found by the search: bf16 standardisation over other excluded dims was in bf16 (5% off)
@example(case=_clip_case("below", torch.bfloat16, "policy", shape=(7,), exclude=(-1,), epsilon=0.0,
                         log_ratio_scale=0.05, seed=0))
def test_ppo_clip_loss_matches_float64_oracle(case):
    shape, dtype = case["shape"], case["dtype"]
    g = torch.Generator().manual_seed(case["seed"])
    prev64 = torch.randn(shape, generator=g, dtype=torch.float64)
    lp64 = prev64 + case["log_ratio_scale"] * torch.randn(shape, generator=g, dtype=torch.float64)
    adv64 = torch.randn(*shape, 1, generator=g, dtype=torch.float64)
    expand_dim = next((d for d in range(len(shape)) if shape[d] > 1), None)
    log_prob, prev, advantage = (_tensor(x, layout, dtype, expand_dim)
                                 for x, layout in zip((lp64, prev64, adv64), case["layouts"]))
    if case["normalize"]:
        assume(_normalisation_groups_vary(advantage, case["exclude"]))
    epsilon = case["epsilon"]
    if epsilon == "tensor":
        epsilon = torch.tensor(0.2, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    log_prob = log_prob.detach().requires_grad_()
    kwargs = dict(normalize_advantage=case["normalize"], normalize_advantage_exclude_dims=case["exclude"],
                  reduction=case["reduction"])
    with _path_context(case["path"], "ppo_clip"):
        out = ppo_clip_loss(log_prob, prev, advantage, clip_epsilon=epsilon, **kwargs)
    cot = torch.randn(out["loss_objective"].shape, generator=g, dtype=torch.float64).to(dtype).double()
    (grad,) = torch.autograd.grad((out["loss_objective"] * cot.to(dtype)).sum(), log_prob)

    # The oracle on the values read, with the op's own bounds (as ClipPPOLoss keeps them).
    low, high = clip_bounds(epsilon, log_prob)
    lp_ref = log_prob.detach().to(torch.float64).requires_grad_()
    ref = clip_oracle(lp_ref, prev.to(torch.float64), advantage.to(torch.float64), low.double(), high.double(),
                      normalize=case["normalize"], exclude_dims=case["exclude"], reduction=case["reduction"])
    (ref_grad,) = torch.autograd.grad((ref["loss_objective"] * cot).sum(), lp_ref)
    # Where a log-ratio lies within float32 rounding of a clip bound, the op (float32) and the
    # oracle (float64) may clip differently: the loss is continuous there, its gradient not.
    lw = lp_ref.detach() - prev.to(torch.float64)
    edge = ((lw - low.double()).abs() < 1e-5) | ((lw - high.double()).abs() < 1e-5)
    assert list(out) == list(ref)
    numel = math.prod(shape)
    rtol, atol = _tolerance(dtype, 64)
    if case["normalize"]:  # standardised: the mean and std's error scales the whole result
        rtol, atol = 4 * rtol, 4 * atol
    for key in ref:
        assert out[key].dtype == dtype and out[key].shape == ref[key].shape, key
        if key == "clip_fraction":
            _close(out[key], ref[key], rtol=0, atol=float(edge.sum()) / numel + rtol, name=key)
        elif key == "loss_objective" and case["reduction"] == "none":
            _close(out[key], ref[key], rtol=rtol, atol=atol * _scale(ref[key]), name=key)
        else:
            _close(out[key], ref[key], rtol=rtol, atol=atol * _scale(ref[key]), name=key)
    _close(grad, ref_grad, rtol=rtol, atol=atol * _scale(ref_grad), name="d_log_prob", mask=~edge)


# --------------------------------------------------------------------------- PPO critic


def _critic_case(size, dtype, path, **changes):
    case = dict(shape=(*_threshold_shape("ppo_critic", size, 3), 1), dtype=dtype,
                layouts=["sliced", "contiguous", "transposed"], clip_value=0.2, coeff=0.5,
                loss_type="smooth_l1", reduction="mean", explained_variance=True, path=path, seed=1)
    return {**case, **changes}


@st.composite
def critic_cases(draw):
    size = draw(st.sampled_from(["small"] * 8 + ["below", "at"]))
    if size == "small":
        shape = (draw(st.integers(1, 40)), *draw(st.lists(st.integers(1, 4), max_size=2)), 1)
    else:
        shape = (*_threshold_shape("ppo_critic", size, draw(st.sampled_from([1, 3]))), 1)
    return dict(
        shape=shape, dtype=draw(st.sampled_from(FLOATS)),
        layouts=draw(st.lists(st.sampled_from(LAYOUTS), min_size=3, max_size=3)),
        clip_value=draw(st.sampled_from([None, 0.0, 0.2, 1.5, "tensor"])),
        coeff=draw(st.sampled_from([None, 0.5, 1.0, "tensor"])),
        loss_type=draw(st.sampled_from(["l1", "l2", "smooth_l1"])),
        reduction=draw(st.sampled_from(["mean", "sum", "none"])),
        explained_variance=draw(st.booleans()),
        path=draw(st.sampled_from(["policy", "op", "fused", "composite"])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@_settings(120)
@given(case=critic_cases())
@example(case=_critic_case("below", torch.float32, "policy"))  # the composite path
@example(case=_critic_case("at", torch.float32, "policy"))  # the fused kernels
@example(case=_critic_case("at", torch.bfloat16, "policy", loss_type="l2", reduction="sum"))
# found by the search: a Python-float clip_value was rounded to float32 for float64 values
@example(case=_critic_case("below", torch.float64, "policy", shape=(1, 1), layouts=["contiguous"] * 3,
                           coeff=None, loss_type="l1", explained_variance=False, seed=0))
def test_ppo_critic_loss_matches_float64_oracle(case):
    shape, dtype = case["shape"], case["dtype"]
    g = torch.Generator().manual_seed(case["seed"])
    target64 = 2 * torch.randn(shape, generator=g, dtype=torch.float64)
    value64 = target64 + torch.randn(shape, generator=g, dtype=torch.float64)
    old64 = value64 + 0.5 * torch.randn(shape, generator=g, dtype=torch.float64)
    value, target, old = (_tensor(x, layout, dtype, 0)
                          for x, layout in zip((value64, target64, old64), case["layouts"]))
    acc = torch.float64 if dtype == torch.float64 else torch.float32

    def scalar(x):
        return torch.tensor(0.3, dtype=acc) if x == "tensor" else x

    clip_value, coeff = scalar(case["clip_value"]), scalar(case["coeff"])
    value = value.detach().requires_grad_()
    kwargs = dict(clip_value=clip_value, coeff=coeff, loss_critic_type=case["loss_type"],
                  reduction=case["reduction"], explained_variance=case["explained_variance"])
    with _path_context(case["path"], "ppo_critic"):
        out = ppo_critic_loss(value, target, old_value=old if clip_value is not None else None, **kwargs)
    cot = torch.randn(out["loss_critic"].shape, generator=g, dtype=torch.float64).to(dtype).double()
    (grad,) = torch.autograd.grad((out["loss_critic"] * cot.to(dtype)).sum(), value)

    v_ref = value.detach().to(torch.float64).requires_grad_()
    old_ref = old.to(torch.float64) if clip_value is not None else None

    def f64(x):
        return x.double() if isinstance(x, torch.Tensor) else x

    ref = critic_oracle(target.to(torch.float64), v_ref, old_ref, f64(clip_value), f64(coeff),
                        loss_type=case["loss_type"], reduction=case["reduction"],
                        explained_variance=case["explained_variance"],
                        eps=torch.finfo(dtype).eps)  # TorchRL's: the inputs' dtype's
    (ref_grad,) = torch.autograd.grad((ref["loss_critic"] * cot).sum(), v_ref)
    assert sorted(out) == sorted(ref)
    # Kinks: |value - old| at the clip edge, the clipped and unclipped losses equal, |t - v| at 1
    # (smooth_l1) or 0 (l1): the op's float32 and the oracle's float64 may sit on either side.
    v, t = v_ref.detach(), target.to(torch.float64)
    edge = ((v - t).abs() - 1).abs() < 1e-5
    edge |= (v - t).abs() < 1e-5
    if clip_value is not None:
        c = float(clip_value)
        edge |= (((v - old_ref).abs() - c).abs() < 1e-5)
        clipped = old_ref + (v - old_ref).clamp(-c, c)
        edge |= ((clipped - t).abs() - (v - t).abs()).abs() < 1e-5
    numel = math.prod(shape)
    rtol, atol = _tolerance(dtype, 64)
    for key in ref:
        assert out[key].shape == ref[key].shape, key
        if key == "value_clip_fraction":
            _close(out[key], ref[key], rtol=0, atol=float(edge.sum()) / numel + rtol, name=key)
        elif key == "explained_variance":
            # 1 - Var(t - v) / Var(t): Var(t) of a stride-0 column is 0 up to rounding
            _close(out[key], ref[key], rtol=8 * rtol, atol=8 * atol * _scale(ref[key]), name=key,
                   mask=t.var(0, correction=0) > 1e-3)
        else:
            mask = None if case["reduction"] != "none" else ~edge.squeeze(-1)
            _close(out[key], ref[key], rtol=rtol, atol=atol * _scale(ref[key]), name=key, mask=mask)
    _close(grad, ref_grad, rtol=rtol, atol=atol * _scale(ref_grad), name="d_value", mask=~edge)


# --------------------------------------------------------------------------- QMIX mixer


def _mixer_params(n, embed, state_dim, hidden, dtype, g) -> QMixParams:
    def linear(out_features, in_features):
        bound = in_features ** -0.5
        return [((torch.rand(out_features, in_features, generator=g, dtype=torch.float64) * 2 - 1) * bound).to(dtype),
                ((torch.rand(out_features, generator=g, dtype=torch.float64) * 2 - 1) * bound).to(dtype)]

    first = hidden or n * embed
    params = (linear(first, state_dim) + linear(hidden or embed, state_dim) + linear(embed, state_dim)
              + linear(embed, state_dim) + linear(1, embed))
    if hidden:
        params += linear(n * embed, hidden) + linear(embed, hidden)
    return QMixParams(*params)


def _qmix_case(size, dtype, path, **changes):
    n, embed, batch, grad = 3, 8, 20, True
    if size in ("batch-1", "batch"):
        batch = SMALL_BATCH - (size == "batch-1")
    elif size in ("work-1", "work"):
        n, embed, grad = 8, 32, False
        batch = SMALL_FORWARD_WORK // (n * embed) - (size == "work-1")
    elif size == "chunk+1":
        n, embed = 8, 32
        batch = QMIX_CHUNK_ELEMENTS // (n * embed) + 1
    case = dict(batch=batch, n=n, embed=embed, state_dim=13, hidden=0, dtype=dtype, param_dtype=dtype,
                q_layout="transposed", state_layout="sliced", grad=grad, path=path, seed=1)
    return {**case, **changes}


@st.composite
def qmix_cases(draw):
    # Threshold-sized examples (up to 2**20 mixing elements) cost ~100x a small one: ~5% of
    # the draws, plus the explicit examples.
    size = draw(st.sampled_from(["small"] * 95 + ["batch-1", "batch", "work-1", "work", "chunk+1"]))
    n, embed = draw(st.integers(1, 5)), draw(st.sampled_from([1, 4, 8, 32]))
    batch = draw(st.integers(1, 40))
    grad = draw(st.booleans())
    if size in ("batch-1", "batch"):  # SMALL_BATCH samples decide the eager path with grad
        batch, grad = SMALL_BATCH - (size == "batch-1"), True
    elif size in ("work-1", "work", "chunk+1"):
        # B * n * E against SMALL_FORWARD_WORK (without grad) and the CPU chunk (with)
        n, embed = 8, 32
        batch = SMALL_FORWARD_WORK // (n * embed) - (size == "work-1")
        if size == "chunk+1":
            batch, grad = QMIX_CHUNK_ELEMENTS // (n * embed) + 1, True
        else:
            grad = False
    dtype = draw(st.sampled_from(FLOATS))
    return dict(
        batch=batch, n=n, embed=embed, state_dim=draw(st.integers(1, 20)),
        hidden=draw(st.sampled_from([0, 0, 6])),
        dtype=dtype, param_dtype=draw(st.sampled_from([dtype, torch.float32])),
        q_layout=draw(st.sampled_from(LAYOUTS)), state_layout=draw(st.sampled_from(LAYOUTS)),
        grad=grad, path=draw(st.sampled_from(["policy", "op", "fused", "composite"])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@_settings(80)
@given(case=qmix_cases())
@example(case=_qmix_case("batch-1", torch.float32, "policy"))  # composite with grad
@example(case=_qmix_case("batch", torch.float32, "policy", hidden=6))  # fused with grad
@example(case=_qmix_case("work-1", torch.float32, "policy"))  # composite without grad
@example(case=_qmix_case("work", torch.float32, "policy"))  # fused without grad
@example(case=_qmix_case("chunk+1", torch.float64, "fused", state_layout="expanded"))  # two CPU chunks
@example(case=_qmix_case("batch", torch.bfloat16, "policy", param_dtype=torch.float32))
def test_qmix_mixer_matches_float64_oracle(case):
    B, n, E, S, dtype = case["batch"], case["n"], case["embed"], case["state_dim"], case["dtype"]
    single = dtype == case["param_dtype"] and dtype in (torch.float32, torch.float64)
    assume(case["path"] != "composite" or single)  # the composite path takes TorchRL's dtypes only
    g = torch.Generator().manual_seed(case["seed"])
    params = _mixer_params(n, E, S, case["hidden"], case["param_dtype"], g)
    q = _tensor(torch.randn(B, n, generator=g, dtype=torch.float64), case["q_layout"], dtype, 0)
    state = _tensor(torch.randn(B, S, generator=g, dtype=torch.float64), case["state_layout"], dtype, 0)
    grad = case["grad"]
    inputs = [x.detach().requires_grad_(grad) for x in (q, state, *params.flat())]
    with _path_context(case["path"], "qmix"), torch.set_grad_enabled(grad):
        q_tot = qmix_mixer(inputs[0], inputs[1], QMixParams.from_flat(inputs[2:]))
    ref_inputs = [x.detach().to(torch.float64).requires_grad_(grad) for x in inputs]
    with torch.set_grad_enabled(grad):
        ref = qmix_oracle(ref_inputs[0].unsqueeze(-1), ref_inputs[1], QMixParams.from_flat(ref_inputs[2:]))
    out_dtype = torch.promote_types(torch.promote_types(dtype, dtype), case["param_dtype"])
    assert q_tot.shape == (B, 1) and q_tot.dtype == out_dtype
    rtol, atol = _tolerance(out_dtype, 4 * (n * E + S + case["hidden"]))
    _close(q_tot, ref, rtol=rtol, atol=atol * _scale(ref), name="q_tot")
    if grad:
        cot = torch.randn(B, 1, generator=g, dtype=torch.float64).to(out_dtype).double()
        grads = torch.autograd.grad((q_tot * cot.to(out_dtype)).sum(), inputs)
        ref_grads = torch.autograd.grad((ref * cot).sum(), ref_inputs)
        names = ("q", "state", *QMixParams._fields)
        for name, a, e in zip(names, grads, ref_grads):
            # weight gradients sum over the batch: their error grows with it
            steps = 4 * (n * E + S + case["hidden"]) + (B if name not in ("q", "state") else 0)
            rtol_g, atol_g = _tolerance(a.dtype, steps)
            _close(a, e, rtol=rtol_g, atol=atol_g * _scale(e), name=f"d_{name}")
