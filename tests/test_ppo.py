"""The fused PPO ops and functionals: float64 oracle, opcheck, gradcheck, compile, bad input."""

from contextlib import nullcontext

import pytest
import torch
from helpers import assert_close, requires_cuda

from fastmarl import functional
from fastmarl.functional import clip_bounds, ppo_clip_loss, ppo_critic_loss
from fastmarl.ops import Path, force_path
from fastmarl.ops.ppo import select_path
from fastmarl.ops.ppo.naive import ppo_clip as ppo_clip_reference
from fastmarl.ops.ppo.naive import ppo_critic as ppo_critic_reference
from fastmarl.ops.ppo.op import EAGER_FUSED_MIN_ELEMENTS


@pytest.fixture(params=["policy", "fused", "op"])
def path(request):
    """A numerics test three times: as shipped (the composite path at these sizes), with the
    fused kernels forced at every size, and through the registered op (its CPU kernels), so that
    the float64 oracle checks each implementation on the odd shapes."""
    if request.param == "policy":
        yield request.param
        return
    with force_path(request.param, "ppo_clip", "ppo_critic"):
        yield request.param


SHAPES = [
    pytest.param((400, 3), id="N400-A3"),
    pytest.param((1, 3), id="N1-A3"),
    pytest.param((37, 1), id="N37-A1"),
    pytest.param((37, 5, 3), id="N37x5-A3"),
    pytest.param((11,), id="N11-flat"),
]


def _clip_inputs(shape, dtype=torch.float64, scale=0.3):
    log_prob = torch.randn(shape, dtype=dtype) * scale
    prev = torch.randn(shape, dtype=dtype) * scale
    advantage = torch.randn(*shape, 1, dtype=dtype)
    return log_prob, prev, advantage


def _compare_clip(shape, *, normalize, exclude, reduction, clip_epsilon=0.2, dtype=torch.float64,
                  inputs=None, atol=1e-10, rtol=1e-8):
    log_prob, prev, advantage = inputs or _clip_inputs(shape, dtype)
    lp, lp_ref = log_prob.clone().requires_grad_(), log_prob.clone().requires_grad_()
    out = ppo_clip_loss(lp, prev, advantage, clip_epsilon=clip_epsilon, normalize_advantage=normalize,
                        normalize_advantage_exclude_dims=exclude, reduction=reduction)
    low, high = clip_bounds(clip_epsilon, log_prob)
    ref = ppo_clip_reference(lp_ref, prev, advantage, low.to(dtype), high.to(dtype), normalize=normalize,
                             exclude_dims=exclude, reduction=reduction)
    assert list(out) == list(ref)
    for key in ref:
        assert out[key].shape == ref[key].shape, key
        assert_close(out[key], ref[key], atol=atol, rtol=rtol, name=key)
    cot = torch.randn_like(ref["loss_objective"])
    (out["loss_objective"] * cot).sum().backward()
    (ref["loss_objective"] * cot).sum().backward()
    assert_close(lp.grad, lp_ref.grad, atol=atol, rtol=rtol, name="d_log_prob")
    return out


NORMALIZATIONS = {"raw": (False, ()), "global-std": (True, ()), "per-agent-std": (True, (-2,))}
# A flat batch has no agent dim to standardise per agent (test_clip_missing_agent_dim covers it).
CLIP_CASES = [
    pytest.param(shape.values[0], *NORMALIZATIONS[norm], id=f"{shape.id}-{norm}")
    for shape in SHAPES for norm in NORMALIZATIONS
    if not (norm == "per-agent-std" and len(shape.values[0]) < 2)
]


@pytest.mark.parametrize("shape,normalize,exclude", CLIP_CASES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_clip_matches_float64_reference(shape, normalize, exclude, reduction, path):
    _compare_clip(shape, normalize=normalize, exclude=exclude, reduction=reduction)


def test_clip_asymmetric_epsilon_and_tensor_epsilon(path):
    _compare_clip((64, 3), normalize=True, exclude=(-2,), reduction="mean", clip_epsilon=(0.1, 0.3))
    _compare_clip((64, 3), normalize=False, exclude=(), reduction="none",
                  clip_epsilon=torch.tensor(0.25, dtype=torch.float64))


def test_clip_other_exclude_dims_standardise_in_torch(path):
    # Exclusions other than the agent dim go through TorchRL's _standardize, then the op.
    _compare_clip((9, 4, 3), normalize=True, exclude=(-3,), reduction="mean")
    _compare_clip((9, 4, 3), normalize=True, exclude=(-3, -2), reduction="mean")
    # Every dim excluded: TorchRL leaves the advantage as it is.
    inputs = _clip_inputs((9, 4, 3))
    excluded = _compare_clip((9, 4, 3), normalize=True, exclude=(0, 1, 2, 3), reduction="mean", inputs=inputs)
    raw = _compare_clip((9, 4, 3), normalize=False, exclude=(), reduction="mean", inputs=inputs)
    assert torch.equal(excluded["loss_objective"], raw["loss_objective"])


@pytest.mark.parametrize("value", [0.25, 0.7, -1234.5678])
@pytest.mark.parametrize("exclude", [(), (-2,)], ids=["global", "per-agent"])
def test_clip_all_equal_advantages_standardise_to_exactly_zero(path, value, exclude):
    # std 0, clamped at 1e-6 as TorchRL does. The mean is taken shifted by the first sample, so
    # the standardised advantage is exactly 0: TorchRL's plain float32 mean of 0.7 over 3000
    # samples is an ulp off, which the clamp amplified to -0.115 (the Triton kernel: +0.437).
    shape = (3000, 3)
    log_prob, prev, _ = _clip_inputs(shape, dtype=torch.float32)
    advantage = torch.full((*shape, 1), value)
    out = ppo_clip_loss(log_prob, prev, advantage, normalize_advantage=True,
                        normalize_advantage_exclude_dims=exclude, reduction="none")
    assert torch.equal(out["loss_objective"], torch.zeros(shape))


def test_clip_extreme_log_ratios_stay_finite(path):
    shape = (50, 3)
    log_prob, prev, advantage = _clip_inputs(shape, dtype=torch.float32)
    log_prob = log_prob + torch.where(torch.rand(shape) < 0.5, 30.0, -30.0)
    out = _compare_clip(shape, normalize=True, exclude=(-2,), reduction="mean", dtype=torch.float32,
                        inputs=(log_prob, prev, advantage), atol=1e-3, rtol=1e-5)
    for key, value in out.items():
        assert torch.isfinite(value).all(), key


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.bfloat16, 5e-2), (torch.float16, 5e-3)])
def test_clip_low_precision_inputs(dtype, atol, path):
    log_prob, prev, advantage = _clip_inputs((64, 3), dtype=torch.float64)
    out = ppo_clip_loss(log_prob.to(dtype), prev.to(dtype), advantage.to(dtype), normalize_advantage=True,
                        normalize_advantage_exclude_dims=(-2,))
    ref = ppo_clip_reference(log_prob, prev, advantage, *clip_bounds(0.2, log_prob), normalize=True,
                             exclude_dims=(-2,))
    for key in ref:
        assert out[key].dtype == dtype
        assert_close(out[key], ref[key], atol=atol, rtol=atol, name=key)


def _half_ulps(actual, exact, dtype):
    """|actual - exact| in units of half an ulp of ``dtype`` at ``exact``: <= 1 is what rounding
    the exact value once to ``dtype`` gives."""
    exact = exact.detach().double()
    tiny = torch.finfo(dtype).tiny
    ulp = torch.finfo(dtype).eps * torch.exp2(torch.floor(torch.log2(exact.abs().clamp_min(tiny))))
    return (actual.detach().double() - exact).abs() / (ulp / 2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("path", ["policy", "op", "fused", "composite"])
def test_half_precision_is_computed_in_float32_and_rounded_once(dtype, path):
    # Issue 12: "bf16 PPO on the CPU does not accumulate in float32 although the docstring says
    # half inputs do". The float64 oracle on the same (half-rounded) inputs, rounded once to the
    # half dtype, is what float32 arithmetic gives up to float32's own error: every element
    # within one half-ulp (+0.5%, float32's share). The same oracle computed in the half dtype
    # (TorchRL's op sequence on half tensors) is hundreds of half-ulps off.
    g = torch.Generator().manual_seed(0)
    N, M = 512, 3
    lp = (torch.randn(N, M, generator=g) * 0.3).to(dtype)
    prev = (torch.randn(N, M, generator=g) * 0.3).to(dtype)
    adv = (torch.randn(N, M, 1, generator=g) + 0.5).to(dtype)
    low, high = clip_bounds(0.2, lp)
    kwargs = dict(normalize_advantage=True, normalize_advantage_exclude_dims=(-2,))

    def context():
        return nullcontext() if path == "policy" else force_path(path, "ppo_clip", "ppo_critic")

    for reduction in ("none", "mean"):
        log_prob = lp.clone().requires_grad_()
        with context():
            out = ppo_clip_loss(log_prob, prev, adv, reduction=reduction, **kwargs)
        cot = torch.full_like(out["loss_objective"], 0.7)  # its 1/N is not a half value
        (grad,) = torch.autograd.grad(out["loss_objective"], log_prob, cot)
        lp64 = lp.double().requires_grad_()
        ref = ppo_clip_reference(lp64, prev.double(), adv.double(), low.double(), high.double(), normalize=True,
                                 exclude_dims=(-2,), reduction=reduction)
        (ref_grad,) = torch.autograd.grad(ref["loss_objective"], lp64, cot.double())
        for key in ref:
            assert out[key].dtype == dtype
            assert _half_ulps(out[key], ref[key], dtype).max() <= 1.005, (reduction, key)
        assert _half_ulps(grad, ref_grad, dtype).max() <= 1.005, (reduction, "d_log_prob")
    half_arithmetic = ppo_clip_reference(lp, prev, adv, low.to(dtype), high.to(dtype), normalize=True,
                                         exclude_dims=(-2,), reduction="none")["loss_objective"]
    exact = ppo_clip_reference(lp.double(), prev.double(), adv.double(), low.double(), high.double(),
                               normalize=True, exclude_dims=(-2,), reduction="none")["loss_objective"]
    worse = _half_ulps(half_arithmetic, exact, dtype)
    assert worse.max() > 50 and (worse > 1.005).float().mean() > 0.3

    # The critic: every loss type and value clipping, per element.
    target = (torch.randn(N, M, 1, generator=g) * 2).to(dtype)
    value64 = target.double() + torch.randn(N, M, 1, generator=g, dtype=torch.float64)
    old = (value64 + 0.5 * torch.randn(N, M, 1, generator=g, dtype=torch.float64)).to(dtype)
    value = value64.to(dtype).requires_grad_()
    for loss_type in ("l1", "l2", "smooth_l1"):
        with context():
            out = ppo_critic_loss(value, target, old_value=old, clip_value=0.2, coeff=0.5,
                                  loss_critic_type=loss_type, reduction="none")
        cot = torch.full_like(out["loss_critic"], 0.7)
        (grad,) = torch.autograd.grad(out["loss_critic"], value, cot)
        v64 = value.detach().double().requires_grad_()
        ref = ppo_critic_reference(target.double(), v64, old.double(), 0.2, 0.5, loss_type=loss_type,
                                   reduction="none")
        (ref_grad,) = torch.autograd.grad(ref["loss_critic"], v64, cot.double())
        assert _half_ulps(out["loss_critic"], ref["loss_critic"], dtype).max() <= 1.005, loss_type
        assert _half_ulps(grad, ref_grad, dtype).max() <= 1.005, (loss_type, "d_value")


@pytest.mark.parametrize("loss_type", ["l1", "l2", "smooth_l1"])
@pytest.mark.parametrize("clip", [None, 0.2], ids=["no-clip", "clip"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(400, 3, 1), (1, 3, 1), (37, 1, 1), (13, 1)], ids=str)
def test_critic_matches_float64_reference(loss_type, clip, reduction, shape, path):
    value = torch.randn(shape, dtype=torch.float64)
    target = torch.randn(shape, dtype=torch.float64)
    old = value + 0.3 * torch.randn(shape, dtype=torch.float64)
    v, v_ref = value.clone().requires_grad_(), value.clone().requires_grad_()
    clip_t = None if clip is None else torch.tensor(clip, dtype=torch.float64)
    coeff = torch.tensor(0.5, dtype=torch.float64)
    out = ppo_critic_loss(v, target, old_value=old, clip_value=clip_t, coeff=coeff,
                          loss_critic_type=loss_type, reduction=reduction)
    ref = ppo_critic_reference(target, v_ref, old if clip else None, clip_t, coeff, loss_type=loss_type,
                               reduction=reduction)
    assert list(out) == list(ref)
    for key in ref:
        assert out[key].shape == ref[key].shape, key
        assert_close(out[key], ref[key], atol=1e-10, rtol=1e-8, name=key)
    cot = torch.randn_like(ref["loss_critic"])
    (out["loss_critic"] * cot).sum().backward()
    (ref["loss_critic"] * cot).sum().backward()
    assert_close(v.grad, v_ref.grad, atol=1e-10, rtol=1e-8, name="d_value")


def test_critic_tie_at_the_clip_splits_the_gradient_like_torch_maximum(path):
    # value inside the clip range: clipped and unclipped losses tie, the halves must add up.
    value = torch.tensor([[0.1], [0.5]], dtype=torch.float64)
    old = torch.tensor([[0.0], [0.0]], dtype=torch.float64)
    target = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    v, v_ref = value.clone().requires_grad_(), value.clone().requires_grad_()
    out = ppo_critic_loss(v, target, old_value=old, clip_value=0.3, loss_critic_type="l2")
    ref = ppo_critic_reference(target, v_ref, old, torch.tensor(0.3, dtype=torch.float64), loss_type="l2")
    out["loss_critic"].backward()
    ref["loss_critic"].backward()
    assert_close(v.grad, v_ref.grad, atol=1e-12, rtol=0)


# --------------------------------------------------------------------------- opcheck, gradcheck


def _op_args(N=30, M=3, G=3, normalize=True, reduction="mean", dtype=torch.float64):
    log_prob = torch.randn(N, M, dtype=dtype, requires_grad=True)
    prev = torch.randn(N, M, dtype=dtype)
    advantage = torch.randn(N, M, dtype=dtype)
    low, high = clip_bounds(0.2, log_prob)
    return (log_prob, prev, advantage, low.to(dtype), high.to(dtype), G, normalize, reduction)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("normalize", [False, True])
def test_opcheck_ppo_clip(reduction, normalize):
    torch.library.opcheck(torch.ops.fastmarl.ppo_clip.default, _op_args(normalize=normalize, reduction=reduction))


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_opcheck_ppo_critic(reduction):
    value = torch.randn(30, 3, dtype=torch.float64, requires_grad=True)
    args = (value, torch.randn(30, 3, dtype=torch.float64), torch.randn(30, 3, dtype=torch.float64),
            torch.tensor(0.2, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64), "smooth_l1",
            reduction, True)
    torch.library.opcheck(torch.ops.fastmarl.ppo_critic.default, args)


def test_gradcheck_float64():
    log_prob, prev, advantage = _clip_inputs((20, 3))

    def clip_loss(lp):
        return ppo_clip_loss(lp, prev, advantage, normalize_advantage=True,
                             normalize_advantage_exclude_dims=(-2,), reduction="none")["loss_objective"]

    assert torch.autograd.gradcheck(clip_loss, (log_prob.requires_grad_(),))
    target = torch.randn(20, 3, 1, dtype=torch.float64)
    old = torch.randn(20, 3, 1, dtype=torch.float64)

    def critic_loss(value):
        return ppo_critic_loss(value, target, old_value=old, clip_value=0.4, coeff=0.7,
                               loss_critic_type="smooth_l1", reduction="none")["loss_critic"]

    # Away from the kinks (|v - t| = 1, the clip edges), where finite differences are exact.
    value = (target + 0.25 * torch.rand_like(target)).requires_grad_()
    assert torch.autograd.gradcheck(critic_loss, (value,))


@pytest.mark.parametrize("path", ["fused", "composite", "op"])
def test_second_derivatives_are_exact_on_every_path(path):
    # A Hessian-vector product through the loss (e.g. a natural-gradient or meta-RL step): the
    # fused path and the op recompute their backward in torch ops when a graph of it is asked
    # for, instead of dropping the d2L/dlogp2 term.
    log_prob, prev, advantage = _clip_inputs((30, 3))
    target = torch.randn(30, 3, 1, dtype=torch.float64)
    old = target + 0.3 * torch.randn_like(target)

    def clip_loss(lp):
        return ppo_clip_loss(lp, prev, advantage, normalize_advantage=True,
                             normalize_advantage_exclude_dims=(-2,), reduction="sum")["loss_objective"]

    def critic_loss(value):
        return ppo_critic_loss(value, target, old_value=old, clip_value=0.4, coeff=0.7,
                               loss_critic_type="l2", reduction="mean")["loss_critic"]

    with force_path(path, "ppo_clip", "ppo_critic"):
        assert torch.autograd.gradgradcheck(clip_loss, (log_prob.clone().requires_grad_(),))
        value = (target + 0.25 * torch.rand_like(target)).requires_grad_()
        assert torch.autograd.gradgradcheck(critic_loss, (value,))
        # and against TorchRL's math: H @ v for the surrogate
        lp = log_prob.clone().requires_grad_()
        (grad,) = torch.autograd.grad(clip_loss(lp), lp, create_graph=True)
        (hvp,) = torch.autograd.grad((grad * prev).sum(), lp)
    lp_ref = log_prob.clone().requires_grad_()
    low, high = clip_bounds(0.2, log_prob)
    ref = ppo_clip_reference(lp_ref, prev, advantage, low.double(), high.double(), normalize=True,
                             exclude_dims=(-2,), reduction="sum")["loss_objective"]
    (grad_ref,) = torch.autograd.grad(ref, lp_ref, create_graph=True)
    (hvp_ref,) = torch.autograd.grad((grad_ref * prev).sum(), lp_ref)
    assert_close(hvp, hvp_ref, atol=1e-10, rtol=1e-8, name="hvp")


def test_compile_fullgraph_functionals():
    torch._dynamo.reset()
    log_prob, prev, advantage = _clip_inputs((64, 3), dtype=torch.float32)

    def step(lp, prev, advantage, value, target):
        clip = ppo_clip_loss(lp, prev, advantage, normalize_advantage=True, normalize_advantage_exclude_dims=(-2,))
        critic = ppo_critic_loss(value, target, coeff=0.5)
        return clip["loss_objective"] + critic["loss_critic"], clip["ESS"], critic["explained_variance"]

    compiled = torch.compile(step, fullgraph=True)
    value, target = torch.randn(64, 3, 1), torch.randn(64, 3, 1)
    lp_c, lp_e = log_prob.clone().requires_grad_(), log_prob.clone().requires_grad_()
    v_c, v_e = value.clone().requires_grad_(), value.clone().requires_grad_()
    out_c = compiled(lp_c, prev, advantage, v_c, target)
    out_e = step(lp_e, prev, advantage, v_e, target)
    for a, e in zip(out_c, out_e):
        assert_close(a, e, atol=1e-6, rtol=1e-6)
    out_c[0].backward()
    out_e[0].backward()
    assert_close(lp_c.grad, lp_e.grad, atol=1e-6, rtol=1e-6)
    assert_close(v_c.grad, v_e.grad, atol=1e-6, rtol=1e-6)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "change,error,match",
    [
        (dict(advantage=torch.randn(40, 3)), ValueError, r"advantage has shape \(40, 3\), expected \[\*S, 1\] = \(40, 3, 1\)"),
        (dict(advantage=torch.randn(40, 2, 1)), ValueError, r"advantage has shape \(40, 2, 1\), expected"),
        (dict(prev_log_prob=torch.randn(40, 2)), ValueError, r"prev_log_prob has shape \(40, 2\), expected log_prob's"),
        (dict(log_prob=torch.randn(40, 3).long()), TypeError, r"log_prob must be float16, bfloat16, float32 or float64"),
        (dict(advantage=torch.ones(40, 3, 1, dtype=torch.int32)), TypeError, r"advantage must be float"),
        (dict(prev_log_prob=torch.randn(40, 3, device="meta")), ValueError, r"prev_log_prob is on meta"),
        (dict(log_prob=torch.randn(0, 3), prev_log_prob=torch.randn(0, 3), advantage=torch.randn(0, 3, 1)),
         ValueError, r"log_prob of shape \(0, 3\) is empty"),
        (dict(reduction="avg"), ValueError, r"reduction must be one of"),
    ],
)
def test_clip_bad_input(change, error, match):
    kwargs = dict(log_prob=torch.randn(40, 3), prev_log_prob=torch.randn(40, 3), advantage=torch.randn(40, 3, 1))
    change = dict(change)  # pop() below must not change the shared parameter
    reduction = change.pop("reduction", "mean")
    kwargs.update(change)
    with pytest.raises(error, match=match):
        ppo_clip_loss(kwargs["log_prob"], kwargs["prev_log_prob"], kwargs["advantage"], reduction=reduction)


def test_clip_missing_agent_dim_is_a_clear_error():
    with pytest.raises(ValueError, match=r"excludes the agent dim .* has no agent dim"):
        ppo_clip_loss(torch.randn(40), torch.randn(40), torch.randn(40, 1), normalize_advantage=True,
                      normalize_advantage_exclude_dims=(-2,))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(target=torch.randn(40, 2, 1)), r"target has shape \(40, 2, 1\), expected value's \(40, 3, 1\)"),
        (dict(clip_value=0.2), r"clip_value needs old_value"),
        (dict(loss_critic_type="huber"), r"loss_critic_type must be one of"),
        (dict(target=torch.randn(40, 3, 1).int()), r"target must be float"),
    ],
)
def test_critic_bad_input(kwargs, match):
    args = dict(target=torch.randn(40, 3, 1))
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        ppo_critic_loss(torch.randn(40, 3, 1), **args)


# --------------------------------------------------------------------------- CUDA


@requires_cuda
@pytest.mark.parametrize("shape", [(400, 3), (4096, 3), (65536, 8), (1, 3), (37, 1), (37, 5, 3)], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cuda_kernels_match_float64_reference(shape, reduction):
    log_prob, prev, advantage = _clip_inputs(shape)
    exclude = (-2,) if len(shape) > 1 else ()
    lp = log_prob.float().cuda().requires_grad_()
    out = ppo_clip_loss(lp, prev.float().cuda(), advantage.float().cuda(), normalize_advantage=True,
                        normalize_advantage_exclude_dims=exclude, reduction=reduction)
    lp_ref = log_prob.clone().requires_grad_()
    ref = ppo_clip_reference(lp_ref, prev, advantage, *clip_bounds(0.2, log_prob), normalize=True,
                             exclude_dims=exclude, reduction=reduction)
    for key in ref:
        assert_close(out[key], ref[key], atol=1e-4, rtol=1e-4, name=key)
    cot = torch.randn_like(ref["loss_objective"])
    (out["loss_objective"] * cot.float().cuda()).sum().backward()
    (ref["loss_objective"] * cot).sum().backward()
    assert_close(lp.grad, lp_ref.grad, atol=1e-5, rtol=1e-4)
    value, target = torch.randn(*shape, 1, dtype=torch.float64), torch.randn(*shape, 1, dtype=torch.float64)
    old = value + 0.3 * torch.randn_like(value)
    v = value.float().cuda().requires_grad_()
    out = ppo_critic_loss(v, target.float().cuda(), old_value=old.float().cuda(), clip_value=0.2, coeff=0.5,
                          reduction=reduction)
    v_ref = value.clone().requires_grad_()
    ref = ppo_critic_reference(target, v_ref, old, torch.tensor(0.2, dtype=torch.float64),
                               torch.tensor(0.5, dtype=torch.float64), reduction=reduction)
    for key in ref:
        assert_close(out[key], ref[key], atol=1e-4, rtol=1e-4, name=key)
    cot = torch.randn_like(ref["loss_critic"])
    (out["loss_critic"] * cot.float().cuda()).sum().backward()
    (ref["loss_critic"] * cot).sum().backward()
    assert_close(v.grad, v_ref.grad, atol=1e-5, rtol=1e-4)


@requires_cuda
def test_cuda_opcheck_and_compile():
    args = [a.float().cuda() if isinstance(a, torch.Tensor) else a for a in _op_args()]
    args[0] = args[0].detach().requires_grad_()
    torch.library.opcheck(torch.ops.fastmarl.ppo_clip.default, tuple(args))
    compiled = torch.compile(lambda lp, p, a: ppo_clip_loss(lp, p, a, normalize_advantage=True)["loss_objective"],
                             fullgraph=True)
    lp, prev, adv = (x.float().cuda() for x in _clip_inputs((256, 3)))
    assert_close(compiled(lp, prev, adv), ppo_clip_loss(lp, prev, adv, normalize_advantage=True)["loss_objective"],
                 atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("op", ["ppo_clip", "ppo_critic"])
def test_path_policy_by_size_dtype_and_grad(op):
    # Below EAGER_FUSED_MIN_ELEMENTS the eager CPU path is the composite one (TorchRL's bits);
    # from it on, or with half-precision inputs, the fused kernels; an input other than the
    # log-prob (value) that requires grad, or a compile, takes the composite path.
    threshold = EAGER_FUSED_MIN_ELEMENTS[op]
    below, at = (threshold - 1, 1), (threshold, 1)
    cases = [((torch.zeros(below),), False), ((torch.zeros(at),), False),
             ((torch.zeros(below, dtype=torch.float16),), False), ((torch.zeros(at),), True)]
    assert [select_path(op, operands, grad) for operands, grad in cases] == [
        Path.COMPOSITE, Path.FUSED, Path.FUSED, Path.COMPOSITE]
    with force_path("op", op):
        assert select_path(op, cases[0][0], False) is Path.OP
    log_prob, prev, advantage = _clip_inputs((below[0], 1), torch.float32)
    if op == "ppo_clip":
        # TorchRL's bits, but for the standardisation's mean (taken shifted: to rounding).
        low, high = clip_bounds(0.2, log_prob)
        normalized = ppo_clip_loss(log_prob, prev, advantage, normalize_advantage=True)
        expected = ppo_clip_reference(log_prob, prev, advantage, low, high, normalize=True)
        for key in expected:
            assert_close(normalized[key], expected[key], atol=1e-6, rtol=1e-6, name=key)
        out = ppo_clip_loss(log_prob, prev, advantage)
        ref = ppo_clip_reference(log_prob, prev, advantage, low, high)
    else:
        value = advantage.clone()
        out = ppo_critic_loss(value, value + 1, old_value=value - 1, clip_value=0.2)
        ref = ppo_critic_reference(value + 1, value, value - 1, torch.tensor(0.2))
    assert all(torch.equal(out[k], ref[k]) for k in ref)


def test_cached_float_bounds_survive_inference_mode():
    # clip_bounds caches the bounds of float epsilons; a first call under inference_mode must
    # not leave inference tensors in the cache for a later call with grad.
    functional._FLOAT_BOUNDS.clear()
    log_prob, prev, advantage = _clip_inputs((400, 3), torch.float32)
    with torch.inference_mode():
        ppo_clip_loss(log_prob, prev, advantage, clip_epsilon=0.137)
    low, high = clip_bounds(0.137, log_prob)
    assert not low.is_inference() and not high.is_inference()
    assert clip_bounds(0.137, log_prob)[0] is low  # cached
    lp = log_prob.clone().requires_grad_()
    ppo_clip_loss(lp, prev, advantage, clip_epsilon=0.137)["loss_objective"].backward()
    assert lp.grad is not None and lp.grad.isfinite().all()
    assert_close(low, torch.tensor(0.137).neg().log1p(), atol=0, rtol=0)
