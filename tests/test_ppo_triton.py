"""The PPO Triton kernels on CPU tensors in Triton's interpreter (twins of the CUDA tests).

The launchers of :mod:`fastmarl.ops.ppo.triton` are called directly with NaN-poisoned outputs
and compared with the float64 torch kernels (:mod:`fastmarl.ops.ppo.cpu`, which the float64
oracle tests check); 16 rows per program force several programs, so the partial reductions and
the last-program finalisation run.
"""

import pytest
import torch
from helpers import assert_close, requires_interpreter

from fastmarl.ops.ppo import cpu

pytestmark = requires_interpreter

SMALL_TILES = dict(block_n=16)
CLIP_OUTPUTS = ("loss", "clip_fraction", "kl_approx", "ess", "max_ratio", "mean_ratio", "adv_mean", "adv_std")


def _nan_like(shape, dtype=torch.float32):
    return torch.full(shape, float("nan"), dtype=dtype)


def _clip(N, M, G, normalize, reduction, dtype=torch.float32, log_ratio=None):
    from fastmarl.ops.ppo.op import _clip_meta
    from fastmarl.ops.ppo.triton import ppo_clip_fwd

    log_prob = torch.randn(N, M, dtype=torch.float64) * 0.3
    prev = torch.randn(N, M, dtype=torch.float64) * 0.3
    if log_ratio is not None:
        log_prob = prev + log_ratio
    advantage = torch.randn(N, M, dtype=torch.float64)
    low, high = torch.tensor(0.8, dtype=torch.float64).log(), torch.tensor(1.3, dtype=torch.float64).log()
    ref = cpu.ppo_clip_forward(log_prob, prev, advantage, low, high, G, normalize, reduction)
    args = [x.to(dtype) for x in (log_prob, prev, advantage)] + [low.float(), high.float()]
    out = [_nan_like(x.shape, x.dtype) for x in _clip_meta(*args[:3], G, reduction)]
    ppo_clip_fwd(*args, G, normalize, reduction, **dict(zip(CLIP_OUTPUTS, out)), **SMALL_TILES)
    return args, ref, out


@pytest.mark.parametrize("N,M,G", [(40, 3, 3), (37, 6, 3), (1, 3, 3), (50, 1, 1), (200, 8, 8)], ids=str)
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_clip_kernels_match_float64(N, M, G, normalize, reduction):
    from fastmarl.ops.ppo.triton import ppo_clip_bwd

    args, ref, out = _clip(N, M, G, normalize, reduction)
    for a, e, name in zip(out, ref, CLIP_OUTPUTS):
        assert_close(a, e, atol=2e-5, rtol=2e-5, name=name)
    grad_loss = torch.randn(N, M) if reduction == "none" else torch.tensor(1.7)
    expected = cpu.ppo_clip_backward(grad_loss.double(), *(x.double() for x in args), ref[6], ref[7], G, reduction)
    grad = _nan_like((N, M))
    ppo_clip_bwd(grad_loss, *args, out[6], out[7], G, reduction, grad_log_prob=grad, **SMALL_TILES)
    assert_close(grad, expected, atol=2e-6, rtol=2e-5, name="d_log_prob")


def test_clip_kernel_extreme_log_ratios():
    log_ratio = torch.where(torch.rand(60, 3) < 0.5, 30.0, -30.0).double()
    _, ref, out = _clip(60, 3, 3, True, "mean", log_ratio=log_ratio)
    for a, e in zip(out, ref):
        assert torch.isfinite(a).all()
        assert_close(a, e, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("dtype,atol", [(torch.bfloat16, 5e-2), (torch.float16, 5e-3)])
def test_clip_kernel_half_inputs(dtype, atol):
    args, ref, out = _clip(40, 3, 3, True, "mean", dtype=dtype)
    for a, e in zip(out[:6], ref[:6]):
        assert a.dtype == dtype
        assert_close(a, e, atol=atol, rtol=atol)


@pytest.mark.parametrize("loss_type", ["l1", "l2", "smooth_l1"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("N,M", [(40, 3), (37, 1), (1, 3)], ids=str)
def test_critic_kernels_match_float64(loss_type, clip, reduction, N, M):
    from fastmarl.ops.ppo.op import _critic_meta
    from fastmarl.ops.ppo.triton import ppo_critic_bwd, ppo_critic_fwd

    value, target = torch.randn(N, M, dtype=torch.float64), torch.randn(N, M, dtype=torch.float64)
    old = value + 0.5 * torch.randn(N, M, dtype=torch.float64) if clip else None
    clip_value = torch.tensor(0.3, dtype=torch.float64) if clip else None
    coeff = torch.tensor(0.7, dtype=torch.float64)
    ref = cpu.ppo_critic_forward(value, target, old, clip_value, coeff, loss_type, reduction)
    f = lambda x: None if x is None else x.float()  # noqa: E731
    args = (f(value), f(target), f(old), f(clip_value), f(coeff))
    out = [_nan_like(x.shape) for x in _critic_meta(args[0], args[1], reduction)]
    ppo_critic_fwd(*args, loss_type, reduction, True, **dict(zip(("loss", "clip_fraction", "ev"), out)),
                   **SMALL_TILES)
    for a, e, name in zip(out, ref, ("loss", "value_clip_fraction", "explained_variance")):
        assert_close(a, e, atol=2e-5, rtol=2e-5, name=name)
    grad_loss = torch.randn(N, M) if reduction == "none" else torch.tensor(1.7)
    expected = cpu.ppo_critic_backward(grad_loss.double(), value, target, old, clip_value, coeff, loss_type, reduction)
    grad = _nan_like((N, M))
    ppo_critic_bwd(grad_loss, *args, loss_type, reduction, grad_value=grad, **SMALL_TILES)
    assert_close(grad, expected, atol=2e-6, rtol=2e-5, name="d_value")


@pytest.mark.parametrize("G", [1, 3])
def test_clip_kernel_constant_advantage_standardises_to_zero(G):
    # The stats are of the advantage shifted by its group's first sample: a constant advantage
    # has mean exactly c and standardises to 0, as the CPU kernels do (they agree to 1e-6).
    from fastmarl.ops.ppo.op import _clip_meta
    from fastmarl.ops.ppo.triton import ppo_clip_fwd

    N, M = 300, 3
    log_prob, prev = torch.randn(N, M) * 0.3, torch.randn(N, M) * 0.3
    advantage = torch.full((N, M), 0.7)
    low, high = torch.tensor(0.8).log(), torch.tensor(1.2).log()
    out = [_nan_like(x.shape, x.dtype) for x in _clip_meta(log_prob, prev, advantage, G, "none")]
    ppo_clip_fwd(log_prob, prev, advantage, low, high, G, True, "none", **dict(zip(CLIP_OUTPUTS, out)),
                 **SMALL_TILES)
    assert torch.equal(out[0], torch.zeros(N, M))
    assert torch.equal(out[6], torch.full((G,), 0.7))
    expected = cpu.ppo_clip_forward(log_prob, prev, advantage, low, high, G, True, "none")
    assert_close(out[0], expected[0], atol=1e-6, rtol=0)
