"""The GAE Triton kernels, run on CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1``).

These call the launchers of :mod:`fastmarl.ops.gae.triton` directly (the op sends CPU tensors to the
torch kernel). They are the CPU twins of the CUDA tests in ``test_gae.py``; shapes stay small
because the interpreter runs each program in numpy.
"""

import pytest
import torch
from helpers import assert_close, requires_interpreter
from gae_cases import DONE_PATTERNS, make_flags, make_gae_inputs

from fastmarl.ops.gae.naive import gae as gae_reference

pytestmark = requires_interpreter


def _launch(value, next_value, reward, done, terminated, gamma, lmbda, grad_adv, grad_vt, block_t=None):
    from fastmarl.ops.gae.triton import gae_bwd, gae_fwd

    shape = value.shape
    out_dtype = torch.promote_types(torch.promote_types(value.dtype, next_value.dtype), reward.dtype)
    gamma_s, gamma_t = (1.0, gamma) if isinstance(gamma, torch.Tensor) else (gamma, None)
    lmbda_s, lmbda_t = (1.0, lmbda) if isinstance(lmbda, torch.Tensor) else (lmbda, None)
    # NaN-poisoned outputs: an element the kernel forgets to write fails the comparison.
    adv = torch.full(shape, float("nan"), dtype=out_dtype)
    vt = torch.full(shape, float("nan"), dtype=out_dtype)
    gae_fwd(value, next_value, reward, done, terminated, gamma_s, lmbda_s, gamma_t, lmbda_t,
            adv, vt, block_t=block_t)
    grads = [torch.full(shape, float("nan"), dtype=x.dtype) for x in (value, next_value, reward)]
    gae_bwd(grad_adv.to(out_dtype), grad_vt.to(out_dtype), done, terminated, gamma_s, lmbda_s,
            gamma_t, lmbda_t, *grads, block_t=block_t)
    return (adv, vt), grads


def _check(value, next_value, reward, done, terminated, gamma=0.99, lmbda=0.9, *, atol, rtol, block_t=None):
    def f64(x):
        return x.detach().to(torch.float64).clone().requires_grad_()

    ref_inputs = [f64(x) for x in (value, next_value, reward)]
    ref_gamma = gamma.double() if isinstance(gamma, torch.Tensor) else gamma
    ref_lmbda = lmbda.double() if isinstance(lmbda, torch.Tensor) else lmbda
    ref = gae_reference(ref_gamma, ref_lmbda, *ref_inputs, done, terminated)
    cot = [torch.randn_like(x) for x in ref]
    torch.autograd.backward(ref, cot)
    out, grads = _launch(value, next_value, reward, done, terminated, gamma, lmbda, *cot, block_t=block_t)
    for a, e, name in zip(out, ref, ("advantage", "value_target")):
        assert_close(a, e, atol=atol, rtol=rtol, name=name)
    for a, e, name in zip(grads, ref_inputs, ("d_value", "d_next_value", "d_reward")):
        assert_close(a, e.grad, atol=atol, rtol=rtol, name=name)


@pytest.mark.parametrize(
    "shape,block_t",
    [
        pytest.param((3, 16, 3), None, id="R3-T16-F3-default-tile"),
        pytest.param((2, 1, 3), 16, id="R2-T1-F3"),
        pytest.param((2, 63, 2), 16, id="R2-T63-F2-4tiles"),
        pytest.param((1, 20, 3), 16, id="R1-T20-F3"),
        pytest.param((3, 20, 1), 16, id="R3-T20-F1"),
        pytest.param((1, 9, 70), 16, id="R1-T9-F70-2blocks"),
    ],
)
@pytest.mark.parametrize("pattern", DONE_PATTERNS)
def test_kernels_match_float64_reference(shape, block_t, pattern):
    inputs = make_gae_inputs(shape, pattern=pattern)
    _check(*inputs, atol=2e-6, rtol=2e-6, block_t=block_t)


@pytest.mark.parametrize(
    "dtype,atol", [(torch.float16, 2e-2), (torch.bfloat16, 1.5e-1), (torch.float64, 1e-12)]
)
def test_kernels_dtypes(dtype, atol):
    inputs = make_gae_inputs((2, 24, 3), pattern="truncated", dtype=dtype)
    # γ, λ and γλ exact in float32: the reference (TorchRL's arithmetic) rounds a Python-float γ
    # to float32 even for float64 data, the kernel keeps it in float64.
    _check(*inputs, gamma=127 / 128, lmbda=7 / 8, atol=atol, rtol=atol, block_t=16)


def test_team_signals_with_stride_zero_and_uint8_flags():
    R, T, A = 3, 20, 4
    value, next_value, _, _, _ = make_gae_inputs((R, T, A))
    reward = torch.randn(R, T, 1).expand(R, T, A)
    done, terminated = make_flags((R, T, 1), "truncated")
    done, terminated = done.to(torch.uint8).expand(R, T, A), terminated.to(torch.uint8).expand(R, T, A)
    assert reward.stride(-1) == 0 and done.stride(-1) == 0
    _check(value, next_value, reward, done, terminated, atol=2e-6, rtol=2e-6, block_t=16)


def test_non_contiguous_inputs():
    R, T, F = 3, 21, 3
    value = torch.randn(T, F, R).permute(2, 0, 1)
    next_value = torch.randn(R, 2 * T, F)[:, ::2]
    reward = torch.randn(R, T, 2 * F)[:, :, 1::2]
    done, terminated = (x.transpose(0, 1) for x in make_flags((T, R, F), "truncated"))
    _check(value, next_value, reward, done, terminated, atol=2e-6, rtol=2e-6, block_t=16)


def test_tensor_discounts():
    R, T, F = 3, 18, 2
    inputs = make_gae_inputs((R, T, F), pattern="truncated")
    gamma = 0.99 ** torch.randint(1, 4, (R, T, F)).float()
    lmbda = torch.tensor([0.9, 1.0]).expand(R, T, F)
    _check(*inputs, gamma=gamma, lmbda=lmbda, atol=2e-6, rtol=2e-6, block_t=16)
