"""The QMIX Triton kernels, run on CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1``).

These call the launchers of :mod:`fastmarl.ops.qmix.triton` directly (the op sends CPU tensors
to the torch kernels). They are the CPU twins of the CUDA tests in ``test_qmix.py``: outputs and every
gradient against the float64 reference, with NaN-poisoned buffers so that an element the kernels
forget to write fails. Shapes stay small because the interpreter runs each program in numpy.
"""

import pytest
import torch
from helpers import assert_close, requires_interpreter
from qmix_cases import make_inputs, make_params

from fastmarl.ops.qmix import MODULE_PARAM_NAMES, cpu
from fastmarl.ops.qmix.naive import qmix as qmix_reference
from fastmarl.ops.qmix.weight_grads import weight_and_state_grads

pytestmark = requires_interpreter

# Relative rounding of a result stored in a half dtype (one ulp at 1, with margin).
HALF_ROUNDING = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _launch(q, state, params, grad_q_tot, block_b, save_hidden=True):
    from fastmarl.ops.qmix.triton import qmix_bwd, qmix_fwd

    B, n = q.shape
    E, H, two_layer = params.embed, params.hidden, params.two_layer
    weight = params.hyper_w1_weight
    acc = torch.float64 if torch.float64 in (q.dtype, state.dtype, weight.dtype) else torch.float32
    out_dtype = torch.promote_types(torch.promote_types(q.dtype, state.dtype), weight.dtype)
    q_tot = torch.full((B, 1), float("nan"), dtype=out_dtype)
    hidden_pre = torch.full((B, E), float("nan"), dtype=acc)
    qmix_fwd(q, state, params, q_tot=q_tot, hidden_pre=hidden_pre if save_hidden else None, block_b=block_b)
    if not save_hidden:
        return q_tot, None
    c1 = sum(w.shape[0] for w in params.state_weights)
    buffers = dict(
        dq=torch.full((B, n), float("nan"), dtype=acc),
        dz1=torch.full((B, c1 + E), float("nan"), dtype=acc),
        dz2=torch.full((B if two_layer else 0, n * E + E), float("nan"), dtype=acc),
        g=torch.full((B if two_layer else 0, 2 * H), float("nan"), dtype=acc),
    )
    qmix_bwd(grad_q_tot.to(out_dtype), q, state, params, hidden_pre, **buffers, block_b=block_b)
    for name, buffer in buffers.items():
        assert not buffer.isnan().any(), f"{name}: elements the kernel did not write"
    first, nE = weight.shape[0], n * E
    dz1, dz2 = buffers["dz1"], buffers["dz2"]
    grads = weight_and_state_grads(grad_q_tot.to(out_dtype), buffers["dq"], dz1[:, :first],
                                   dz1[:, first:], dz2[:, :nE], dz2[:, nE:], buffers["g"], q,
                                   state, params, True)
    return (q_tot, hidden_pre), grads


def _check(q, state, params, *, atol, rtol, block_b=16):
    f64 = [x.detach().double().requires_grad_() for x in (q, state, *params.flat())]
    f64_params = type(params).from_flat(f64[2:])
    ref = qmix_reference(f64[0].unsqueeze(-1), f64[1], f64_params)
    grad_q_tot = torch.randn_like(ref)
    ref.backward(grad_q_tot)
    ref_hidden_pre = cpu.qmix_forward(f64[0].detach(), f64[1].detach(), f64_params.map(torch.Tensor.detach),
                                      True)[1].squeeze(1)
    (q_tot, hidden_pre), grads = _launch(q, state, params, grad_q_tot, block_b)
    assert_close(q_tot, ref, atol=atol, rtol=rtol, name="q_tot")
    assert_close(hidden_pre, ref_hidden_pre, atol=atol, rtol=rtol, name="hidden_pre")
    names = ("q", "state", *MODULE_PARAM_NAMES[2 if params.two_layer else 1])
    for name, grad, x, like in zip(names, grads, f64, (q, state, *params.flat())):
        # Weight gradients sum over the batch: the tolerance scales with their magnitude; a
        # gradient returned in a half dtype is rounded to it.
        scale = float(x.grad.abs().max()) + 1.0
        tol = max(atol, HALF_ROUNDING.get(like.dtype, 0.0))
        assert grad.dtype == like.dtype
        assert_close(grad, x.grad, atol=tol * scale, rtol=max(rtol, tol), name=f"d_{name}")


@pytest.mark.parametrize(
    "batch,n,embed,state_dim,hidden",
    [
        pytest.param(33, 3, 8, 37, 0, id="B33-n3-E8-S37-3blocks"),
        pytest.param(1, 1, 8, 5, 0, id="B1-n1-E8-S5"),
        pytest.param(20, 5, 20, 70, 0, id="B20-n5-E20-S70-2Ktiles"),
        pytest.param(17, 2, 8, 37, 24, id="B17-n2-E8-S37-H24-two-layer"),
        pytest.param(5, 1, 16, 9, 16, id="B5-n1-E16-S9-H16-two-layer"),
    ],
)
def test_kernels_match_float64_reference(batch, n, embed, state_dim, hidden):
    params = make_params(n, embed, state_dim, hidden=hidden)
    q, state = make_inputs(batch, n, state_dim)
    _check(q, state, params, atol=2e-6, rtol=2e-5)


@pytest.mark.parametrize(
    "dtype,atol", [(torch.float16, 2e-2), (torch.bfloat16, 1.5e-1), (torch.float64, 1e-12)]
)
def test_kernels_dtypes(dtype, atol):
    params = make_params(3, 8, 37, dtype=dtype)
    q, state = make_inputs(19, 3, 37, dtype=dtype)
    _check(q, state, params, atol=atol, rtol=atol)


def test_half_inputs_with_float32_parameters():
    params = make_params(3, 8, 37, hidden=16)
    q, state = make_inputs(18, 3, 37, dtype=torch.bfloat16)
    _check(q, state, params, atol=2e-6, rtol=2e-5)


def test_non_contiguous_inputs():
    params = make_params(4, 8, 21)
    q = torch.randn(4, 22).t()  # [22, 4], column-major
    state = torch.randn(22, 42)[:, ::2]
    assert not q.is_contiguous() and not state.is_contiguous()
    _check(q, state, params, atol=2e-6, rtol=2e-5)


def test_forward_without_saved_hidden_layer():
    params = make_params(3, 8, 37)
    q, state = make_inputs(21, 3, 37)
    q_tot, _ = _launch(q, state, params, None, 16, save_hidden=False)
    expected = qmix_reference(q.double().unsqueeze(-1), state.double(), params.map(torch.Tensor.double))
    assert_close(q_tot, expected, atol=2e-6, rtol=2e-5)


def test_default_block_size():
    params = make_params(2, 8, 37)
    q, state = make_inputs(40, 2, 37)
    _check(q, state, params, atol=2e-6, rtol=2e-5, block_b=None)
