"""The QMIX mixer op and the drop-in QMixer / VDNMixer / QMixerLoss: float64 oracle, TorchRL
parity (outputs, every gradient, the loss and its TD-error priority), state_dict, the seed page's
example, opcheck, gradcheck, compile, bad input, CUDA."""

import pytest
import torch
from helpers import assert_close, requires_cuda
from qmix_cases import make_inputs, make_params
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.modules import QValueModule, SafeSequential
from torchrl.modules.models.multiagent import QMixer as TorchRLQMixer
from torchrl.modules.models.multiagent import VDNMixer as TorchRLVDNMixer
from torchrl.objectives import SoftUpdate, ValueEstimators
from torchrl.objectives.multiagent import QMixerLoss as TorchRLQMixerLoss

import fastmarl
import fastmarl.modules.models.multiagent as fm_multiagent
from fastmarl import reference
from fastmarl.modules import QMixer, VDNMixer
from fastmarl.objectives import QMixerLoss
from fastmarl.ops import qmix as qmix_ops

# The eager CPU path's size dispatch, as shipped (the autouse fixture below turns it off).
SMALL_BATCH, SMALL_FORWARD_WORK = qmix_ops._SMALL_BATCH, qmix_ops._SMALL_FORWARD_WORK


@pytest.fixture(autouse=True)
def fused_cpu_kernels(request, monkeypatch):
    """mix() sends small eager CPU calls to TorchRL's op sequence (``fastmarl.ops.qmix.mix``).
    These tests check the fused torch kernels at every size, so the dispatch is off but for
    the tests marked ``qmix_dispatch``, which test it as shipped."""
    if request.node.get_closest_marker("qmix_dispatch") is None:
        monkeypatch.setattr(qmix_ops, "_SMALL_BATCH", 0)
        monkeypatch.setattr(qmix_ops, "_SMALL_FORWARD_WORK", 0)

S = 37  # odd state width: masks in every K tile of the kernels


def _run(mixer, q, state, cotangent):
    """Q_tot and the gradients of q, state and every parameter, for ``sum(Q_tot * cotangent)``."""
    q = q.detach().clone().requires_grad_()
    state = state.detach().clone().requires_grad_()
    mixer.zero_grad(set_to_none=True)
    out = mixer(q, state)
    out.backward(cotangent)
    grads = {"q": q.grad, "state": state.grad}
    # (a compiled module names its parameters "_orig_mod.<name>")
    grads.update({name.removeprefix("_orig_mod."): p.grad for name, p in mixer.named_parameters()})
    return out, grads


def _torchrl_twin(mixer):
    twin = TorchRLQMixer(mixer.state_shape, mixer.embed_dim, mixer.n_agents, "cpu")
    twin.load_state_dict(mixer.state_dict())
    return twin.to(next(mixer.parameters()).dtype)


def _scaled_close(actual, expected, rel, name):
    # Gradients of the weights sum over the batch: the tolerance scales with their magnitude.
    scale = float(expected.detach().abs().max()) + 1.0
    assert_close(actual, expected, atol=rel * scale, rtol=rel, name=name)


# --------------------------------------------------------------------------- reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reference_gives_torchrl_bits(dtype):
    torch.manual_seed(0)
    mixer = TorchRLQMixer((S,), 32, 8, "cpu").to(dtype)
    q, state = torch.randn(65, 8, 1, dtype=dtype), torch.randn(65, S, dtype=dtype)
    params = [p for _, p in sorted(mixer.named_parameters(), key=lambda kv: reference.QMIX_PARAM_NAMES[1].index(kv[0]))]
    assert torch.equal(reference.qmix_reference(q, state, params), mixer(q, state))


def test_param_order_is_the_modules():
    for layers in (1, 2):
        mixer = QMixer((S,), 8, 3, hypernet_layers=layers)
        named = dict(mixer.named_parameters())
        assert sorted(named) == sorted(reference.QMIX_PARAM_NAMES[layers])
        for name, p in zip(reference.QMIX_PARAM_NAMES[layers], mixer.mixer_params()):
            assert named[name] is p, name


# --------------------------------------------------------------------------- float64 oracle

GRID = [pytest.param(n, e, b, id=f"n{n}-E{e}-B{b}") for n in (1, 3, 8, 32) for e in (8, 32, 64) for b in (33,)]
GRID += [pytest.param(n, e, b, id=f"n{n}-E{e}-B{b}")
         for n, e, b in [(3, 32, 1), (8, 32, 1), (1, 8, 4096), (8, 32, 4096), (32, 64, 4096)]]


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("n,embed,batch", GRID)
def test_mixer_and_gradients_match_float64_reference(n, embed, batch, layers):
    torch.manual_seed(0)
    mixer = QMixer((S,), embed, n, hypernet_layers=layers, hypernet_embed=24).double()
    q, state = make_inputs(batch, n, S, dtype=torch.float64)
    q = q.unsqueeze(-1)
    cot = torch.randn(batch, 1, dtype=torch.float64)
    out, grads = _run(mixer, q, state, cot)

    ref_q, ref_state = q.clone().requires_grad_(), state.clone().requires_grad_()
    params = [p.detach().clone().requires_grad_() for p in mixer.mixer_params()]
    ref = reference.qmix_reference(ref_q, ref_state, params)
    ref.backward(cot)
    assert out.shape == ref.shape == (batch, 1)
    assert_close(out, ref, atol=1e-12, rtol=1e-12, name="q_tot")
    assert_close(grads["q"], ref_q.grad, atol=1e-12, rtol=1e-10, name="d_q")
    assert_close(grads["state"], ref_state.grad, atol=1e-12, rtol=1e-10, name="d_state")
    for name, p in zip(reference.QMIX_PARAM_NAMES[layers], params):
        _scaled_close(grads[name], p.grad, 1e-12, name)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("chunk_elements", [1 << 20, 1 << 12])
def test_wide_state_small_batch_matches_float64_reference(layers, chunk_elements, monkeypatch):
    # B < 512 with C1*S >= 2**18 elements: the CPU kernel runs four GEMMs instead of
    # concatenating the weights (in one chunk, and in three of 16 samples).
    monkeypatch.setattr(reference, "QMIX_CPU_CHUNK_ELEMENTS", chunk_elements)
    torch.manual_seed(0)
    mixer = QMixer((1440,), 32, 8, hypernet_layers=layers).double()
    q, state = make_inputs(33, 8, 1440, dtype=torch.float64)
    cot = torch.randn(33, 1, dtype=torch.float64)
    out, grads = _run(mixer, q.unsqueeze(-1), state, cot)
    ref_q, ref_state = q.unsqueeze(-1).requires_grad_(), state.clone().requires_grad_()
    params = [p.detach().clone().requires_grad_() for p in mixer.mixer_params()]
    ref = reference.qmix_reference(ref_q, ref_state, params)
    ref.backward(cot)
    assert_close(out, ref, atol=1e-12, rtol=1e-12, name="q_tot")
    for name, expected in zip(("q", "state", *reference.QMIX_PARAM_NAMES[layers]),
                              (ref_q.grad, ref_state.grad, *(p.grad for p in params))):
        _scaled_close(grads[name], expected, 1e-12, name)


@pytest.mark.parametrize("path", ["fused", pytest.param("dispatch", marks=pytest.mark.qmix_dispatch)])
@pytest.mark.parametrize("n,embed,batch", [(1, 8, 33), (3, 32, 1), (8, 32, 4096), (32, 64, 33), (8, 64, 4096)])
def test_float32_matches_torchrl_qmixer(n, embed, batch, path):
    torch.manual_seed(0)
    mixer = QMixer((S,), embed, n)
    twin = _torchrl_twin(mixer)
    q, state = make_inputs(batch, n, S)
    cot = torch.randn(batch, 1)
    out, grads = _run(mixer, q.unsqueeze(-1), state, cot)
    expected, expected_grads = _run(twin, q.unsqueeze(-1), state, cot)
    assert out.dtype == expected.dtype == torch.float32
    _scaled_close(out, expected, 2e-6, "q_tot")
    assert expected_grads.keys() == grads.keys()
    for name, g in expected_grads.items():
        _scaled_close(grads[name], g, 2e-5, name)


def test_chunked_cpu_kernel_matches_reference(monkeypatch):
    # A few samples per chunk: every chunk boundary and the partial last chunk at a small size.
    monkeypatch.setattr(reference, "QMIX_CPU_CHUNK_ELEMENTS", 80)
    for layers in (1, 2):
        torch.manual_seed(0)
        mixer = QMixer((S,), 8, 3, hypernet_layers=layers, hypernet_embed=16).double()
        q, state = make_inputs(23, 3, S, dtype=torch.float64)
        cot = torch.randn(23, 1, dtype=torch.float64)
        out, grads = _run(mixer, q.unsqueeze(-1), state, cot)
        monkeypatch.setattr(reference, "QMIX_CPU_CHUNK_ELEMENTS", 1 << 20)
        expected, expected_grads = _run(mixer, q.unsqueeze(-1), state, cot)
        monkeypatch.setattr(reference, "QMIX_CPU_CHUNK_ELEMENTS", 80)
        assert_close(out, expected, atol=1e-13, rtol=1e-13)
        for name, g in expected_grads.items():
            _scaled_close(grads[name], g, 1e-13, name)


@pytest.mark.qmix_dispatch
def test_eager_function_and_op_agree():
    # From qmix_ops._SMALL_BATCH samples on, mix() in eager mode runs the torch kernels in an
    # autograd.Function; fastmarl::qmix sends CPU tensors to the same kernels behind its op
    # boundary: the same bits.
    batch = SMALL_BATCH + 45
    params = [p.requires_grad_() for p in make_params(5, 16, S, dtype=torch.float64)]
    q, state = make_inputs(batch, 5, S, dtype=torch.float64)
    q.requires_grad_()
    state.requires_grad_()
    cot = torch.randn(batch, 1, dtype=torch.float64)
    results = []
    for call in (
        lambda: qmix_ops.mix(q, state, params),
        lambda: torch.ops.fastmarl.qmix(q, state, params, True)[0],
    ):
        out = call()
        results.append((out, *torch.autograd.grad(out, [q, state, *params], cot)))
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.qmix_dispatch
@pytest.mark.parametrize("hypernet_layers", [1, 2])
def test_small_batch_runs_torchrl_math(hypernet_layers):
    # Below qmix_ops._SMALL_BATCH samples the CPU eager path is TorchRL's op sequence
    # (reference.qmix_reference): TorchRL's bits, and gradients through plain autograd.
    batch = SMALL_BATCH - 1
    params = [p.requires_grad_() for p in make_params(5, 16, S, hidden=0 if hypernet_layers == 1 else 24)]
    q, state = make_inputs(batch, 5, S)
    q.requires_grad_()
    out = qmix_ops.mix(q, state, params)
    expected = reference.qmix_reference(q.unsqueeze(-1), state, params)
    assert torch.equal(out, expected)
    fused = torch.ops.fastmarl.qmix(q, state, params, True)[0]
    assert_close(out, fused, atol=1e-5, rtol=1e-5)
    cot = torch.randn(batch, 1)
    for a, b in zip(torch.autograd.grad(out, [q, *params], cot), torch.autograd.grad(fused, [q, *params], cot)):
        assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.qmix_dispatch
@pytest.mark.parametrize("batch", [(SMALL_FORWARD_WORK >> 7) - 1, SMALL_FORWARD_WORK >> 7])
def test_no_grad_forward_switches_to_fused_kernels_by_work(batch):
    # n=4, E=32: B*n*E reaches _SMALL_FORWARD_WORK at 2^20 / 128 samples. Below it, TorchRL's
    # op sequence; from it on, fastmarl::qmix_torch's forward kernel (no residuals): its bits.
    params = make_params(4, 32, S)
    q, state = make_inputs(batch, 4, S)
    with torch.no_grad():
        out = qmix_ops.mix(q, state, params)
    small = batch * 4 * 32 < SMALL_FORWARD_WORK
    expected = (reference.qmix_reference(q.unsqueeze(-1), state, params) if small
                else reference.qmix_forward_flat(q, state, params, False)[0])
    assert torch.equal(out, expected)
    assert_close(out, torch.ops.fastmarl.qmix(q, state, params, False)[0], atol=1e-5, rtol=1e-5)


def test_no_grad_call_keeps_no_residual_and_matches():
    mixer = QMixer((S,), 16, 4)
    q, state = make_inputs(9, 4, S)
    with torch.no_grad():
        cold = mixer(q.unsqueeze(-1), state)
    params = [p.detach() for p in mixer.mixer_params()]
    q_tot, *residuals = torch.ops.fastmarl.qmix(q, state, params, False)
    assert all(r.numel() == 0 for r in residuals)
    assert torch.equal(cold, q_tot)
    assert torch.equal(cold, mixer(q.unsqueeze(-1), state))


# --------------------------------------------------------------------------- module contract


def test_same_seed_gives_torchrl_initialisation_and_state_dict_loads():
    torch.manual_seed(3)
    theirs = TorchRLQMixer(state_shape=(S,), mixing_embed_dim=32, n_agents=8, device="cpu")
    torch.manual_seed(3)
    ours = QMixer(state_shape=(S,), mixing_embed_dim=32, n_agents=8, device="cpu")
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key

    torch.manual_seed(4)
    trained = TorchRLQMixer(state_shape=(S,), mixing_embed_dim=32, n_agents=8, device="cpu")
    loaded = QMixer(state_shape=(S,), mixing_embed_dim=32, n_agents=8, device="cpu")
    loaded.load_state_dict(trained.state_dict(), strict=True)
    q, state = make_inputs(50, 8, S)
    expected = trained(q.unsqueeze(-1), state)
    actual = loaded(q.unsqueeze(-1), state)
    # Same parameters, same math; the fused GEMM and the mix round differently: ulps apart.
    _scaled_close(actual, expected, 2e-6, "q_tot")
    # and the other way: fastmarl's state_dict loads into TorchRL's QMixer
    trained.load_state_dict(QMixer((S,), 32, 8).state_dict(), strict=True)


def test_two_layer_hypernetworks_are_epymarls():
    mixer = QMixer((S,), 32, 8, hypernet_layers=2, hypernet_embed=64)
    shapes = {k: tuple(v.shape) for k, v in mixer.state_dict().items()}
    assert shapes["hyper_w_1.0.weight"] == (64, S) and shapes["hyper_w_1.2.weight"] == (32 * 8, 64)
    assert shapes["hyper_w_final.0.weight"] == (64, S) and shapes["hyper_w_final.2.weight"] == (32, 64)
    assert shapes["hyper_b_1.weight"] == (32, S) and shapes["V.2.weight"] == (1, 32)
    assert isinstance(mixer.hyper_w_1[1], torch.nn.ReLU)
    assert "hypernet_layers=2, hypernet_embed=64" in repr(mixer)
    # EPyMARL's forward, written with the modules themselves
    q, state = make_inputs(11, 8, S)
    w1 = mixer.hyper_w_1(state).abs().view(-1, 8, 32)
    hidden = torch.nn.functional.elu(torch.bmm(q.unsqueeze(1), w1) + mixer.hyper_b_1(state).unsqueeze(1))
    y = torch.bmm(hidden, mixer.hyper_w_final(state).abs().unsqueeze(2)).view(-1, 1) + mixer.V(state)
    assert_close(mixer(q.unsqueeze(-1), state), y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "q_shape,state_shape,mixer_state_shape",
    [
        pytest.param((4, 6, 3, 1), (4, 6, S), (S,), id="two-batch-dims"),
        pytest.param((5, 3, 1), (5, 64, 64, 3), (64, 64, 3), id="image-state"),
        pytest.param((3, 1), (S,), (S,), id="no-batch-dim"),
        pytest.param((24, 3, 1), (4, 6, S), (S,), id="same-samples-other-batch-shape"),
    ],
)
def test_batch_dims_and_state_shape_like_torchrl(q_shape, state_shape, mixer_state_shape):
    torch.manual_seed(0)
    mixer = QMixer(mixer_state_shape, 8, 3)
    twin = _torchrl_twin(mixer)
    q, state = torch.randn(q_shape), torch.randn(state_shape)
    expected = twin(q, state)
    actual = mixer(q, state)
    assert actual.shape == expected.shape == (*q_shape[:-2], 1)
    _scaled_close(actual, expected, 2e-6, "q_tot")


def test_non_contiguous_inputs():
    torch.manual_seed(0)
    mixer = QMixer((S,), 16, 4).double()
    q = torch.randn(4, 30, 1, dtype=torch.float64).transpose(0, 1)  # [30, 4, 1], strided
    state = torch.randn(30, 2 * S, dtype=torch.float64)[:, ::2]
    assert not q.is_contiguous() and not state.is_contiguous()
    expected = reference.qmix_reference(q, state, mixer.mixer_params())
    assert_close(mixer(q, state), expected, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(
    "dtype,param_dtype,atol",
    [(torch.float16, torch.float32, 1e-5), (torch.bfloat16, torch.float32, 1e-5),
     (torch.float16, torch.float16, 2e-2), (torch.bfloat16, torch.bfloat16, 1e-1)],
)
def test_half_inputs_accumulate_in_float32(dtype, param_dtype, atol):
    torch.manual_seed(0)
    mixer = QMixer((S,), 32, 8).to(param_dtype)
    q, state = make_inputs(64, 8, S, dtype=dtype)
    out = mixer(q.unsqueeze(-1), state)
    assert out.dtype == torch.promote_types(dtype, param_dtype)
    # The reference on the same (rounded) values, in float64: only the output rounding differs.
    expected = reference.qmix_reference(q.double().unsqueeze(-1), state.double(),
                                        [p.double() for p in mixer.mixer_params()])
    assert_close(out, expected, atol=atol, rtol=atol)
    out.sum().backward()
    assert all(p.grad.dtype == param_dtype and p.grad.isfinite().all() for p in mixer.parameters())


def test_vdn_mixer_is_torchrls_with_optional_device():
    q = torch.randn(7, 4, 1)
    assert torch.equal(VDNMixer(n_agents=4)(q), TorchRLVDNMixer(n_agents=4, device="cpu")(q))
    assert issubclass(VDNMixer, TorchRLVDNMixer)
    assert fastmarl.modules.models.multiagent.VDNMixer is VDNMixer


def test_seed_page_qmixer_without_device():
    # The objectives page's "QMIX vs VDN" snippet omits device=, which TorchRL 0.14.1 requires.
    mixer = QMixer(state_shape=(64, 64, 3), mixing_embed_dim=32, n_agents=4)
    assert mixer(torch.zeros(2, 4, 1), torch.zeros(2, 64, 64, 3)).shape == (2, 1)
    with pytest.raises(TypeError):
        TorchRLQMixer(state_shape=(64, 64, 3), mixing_embed_dim=32, n_agents=4)


# --------------------------------------------------------------------------- opcheck, gradcheck


def _op_args(layers, dtype=torch.float64):
    params = make_params(3, 8, S, hidden=16 if layers == 2 else 0, dtype=dtype)
    q, state = make_inputs(11, 3, S, dtype=dtype)
    return q, state, params


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("need_residual", [True, False])
def test_opcheck_forward(layers, need_residual):
    q, state, params = _op_args(layers)
    torch.library.opcheck(torch.ops.fastmarl.qmix_torch.default, (q, state, params, need_residual))
    for x in (q, state, *params):
        x.requires_grad_(need_residual)
    torch.library.opcheck(torch.ops.fastmarl.qmix.default, (q, state, params, need_residual))


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("op", ["qmix_backward", "qmix_backward_torch"])
@pytest.mark.parametrize("need_state_grad", [False, True])
def test_opcheck_backward(layers, op, need_state_grad):
    q, state, params = _op_args(layers, dtype=torch.float32)
    _, hidden_pre, z1, z2 = torch.ops.fastmarl.qmix(q, state, params, True)
    args = (torch.randn(11, 1), q, state, params, hidden_pre, z1, z2, need_state_grad)
    torch.library.opcheck(getattr(torch.ops.fastmarl, op).default, args)


@pytest.mark.parametrize("layers", [1, 2])
def test_gradcheck_float64(layers):
    q, state, params = _op_args(layers)
    inputs = tuple(x.requires_grad_() for x in (q, state, *params))
    assert torch.autograd.gradcheck(lambda q, s, *p: qmix_ops.mix(q, s, list(p)), inputs)
    assert torch.autograd.gradcheck(lambda q, s, *p: torch.ops.fastmarl.qmix(q, s, list(p), True)[0], inputs)


# --------------------------------------------------------------------------- torch.compile


@pytest.mark.parametrize("layers", [1, 2])
def test_compile_fullgraph_forward_backward(layers):
    torch._dynamo.reset()
    torch.manual_seed(0)
    mixer = QMixer((S,), 8, 3, hypernet_layers=layers, hypernet_embed=16).double()
    compiled = torch.compile(mixer, fullgraph=True, dynamic=True)
    for batch in (5, 17):
        q, state = make_inputs(batch, 3, S, dtype=torch.float64, seed=batch)
        cot = torch.randn(batch, 1, dtype=torch.float64)
        out, grads = _run(compiled, q.unsqueeze(-1), state, cot)
        expected, expected_grads = _run(mixer, q.unsqueeze(-1), state, cot)
        # On the CPU the compiled mixer is TorchRL's math traced by Inductor: float64 ulps.
        assert_close(out, expected, atol=1e-12, rtol=1e-12)
        for name, g in expected_grads.items():
            _scaled_close(grads[name], g, 1e-12, name)


@pytest.mark.parametrize("layers", [1, 2])
def test_compile_fullgraph_of_the_op(layers):
    # The op itself under compile (the module traces TorchRL's math on CPU; CUDA calls the op).
    torch._dynamo.reset()
    q, state, params = _op_args(layers)
    inputs = [x.requires_grad_() for x in (q, state, *params)]

    def fn(q, state, *params):
        return torch.ops.fastmarl.qmix(q, state, list(params), True)[0]

    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    cot = torch.randn(11, 1, dtype=torch.float64)
    expected = fn(*inputs)
    actual = compiled(*inputs)
    assert torch.equal(actual, expected)
    for a, e in zip(torch.autograd.grad(actual, inputs, cot), torch.autograd.grad(expected, inputs, cot)):
        assert torch.equal(a, e)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "q,state,error,match",
    [
        (torch.randn(4, 5, 1), torch.randn(4, S), ValueError,
         r"chosen_action_value has shape \(4, 5, 1\), expected \[\*B, n_agents, 1\] with n_agents=3: \[\*B, 3, 1\]"),
        (torch.randn(4, 3), torch.randn(4, S), ValueError, r"chosen_action_value has shape \(4, 3\), expected"),
        (torch.randn(4, 3, 1), torch.randn(4, S + 1), ValueError,
         r"state has shape \(4, 38\), expected \[\*B, \*state_shape\] = \(4, 37\)"),
        (torch.randn(4, 3, 1), torch.randn(5, S), ValueError,
         r"state has shape \(5, 37\), expected \[\*B, \*state_shape\] = \(4, 37\): its batch dims"),
        (torch.randn(4, 3, 1).long(), torch.randn(4, S), TypeError,
         r"chosen_action_value must be float16, bfloat16, float32 or float64, got torch.int64"),
        (torch.randn(4, 3, 1), torch.randn(4, S).int(), TypeError, r"state must be float16, bfloat16"),
        (torch.randn(4, 3, 1), [0.0] * S, TypeError, r"state must be a torch.Tensor, got list"),
        (torch.randn(4, 3, 1), torch.randn(4, S, device="meta"), ValueError,
         r"state is on meta but chosen_action_value is on cpu"),
        (torch.randn(4, 3, 1, device="meta"), torch.randn(4, S, device="meta"), ValueError,
         r"chosen_action_value is on meta but the mixer's parameters are on cpu"),
        (torch.randn(0, 3, 1), torch.randn(0, S), ValueError,
         r"chosen_action_value of shape \(0, 3, 1\) is empty"),
    ],
)
def test_bad_input_names_the_argument(q, state, error, match):
    with pytest.raises(error, match=match):
        QMixer((S,), 8, 3)(q, state)


def test_bad_constructor_and_call_arguments():
    with pytest.raises(ValueError, match="hypernet_layers must be 1 or 2, got 3"):
        QMixer((S,), 8, 3, hypernet_layers=3)
    with pytest.raises(ValueError, match="n_agents must be a positive integer, got 0"):
        QMixer((S,), 8, 0)
    with pytest.raises(ValueError, match=r"QMixer takes \(chosen_action_value, state\), got 1 input"):
        QMixer((S,), 8, 3)(torch.randn(2, 3, 1))


def test_op_rejects_unflattened_inputs_and_wrong_parameters():
    q, state, params = _op_args(1)
    with pytest.raises(ValueError, match=r"q has shape \(11, 3, 1\) and state \(11, 37\), expected \[B, n\]"):
        torch.ops.fastmarl.qmix(q.unsqueeze(-1), state, params, False)
    params[0] = params[0][:, :5]
    with pytest.raises(ValueError, match=r"hyper_w_1.weight has shape \(24, 5\), expected \(24, 37\)"):
        torch.ops.fastmarl.qmix(q, state, params, False)
    with pytest.raises(ValueError, match="expected 10 or 14 parameter tensors, got 9"):
        torch.ops.fastmarl.qmix(q, state, params[:9], False)


# --------------------------------------------------------------------------- QMixerLoss

N_AGENTS, OBS, N_ACTIONS, BATCH = 3, 10, 4, 33


def _build_loss(mixer_cls, loss_cls, *, action_space="categorical", seed=1, **loss_kwargs):
    torch.manual_seed(seed)
    q_module = TensorDictModule(nn.Linear(OBS, N_ACTIONS), in_keys=[("agents", "observation")],
                                out_keys=[("agents", "action_value")])
    value_module = QValueModule(
        action_value_key=("agents", "action_value"),
        out_keys=[("agents", "action"), ("agents", "action_value"), ("agents", "chosen_action_value")],
        action_space=action_space,
    )
    qnet = SafeSequential(q_module, value_module)
    if mixer_cls in (VDNMixer, TorchRLVDNMixer):
        module, in_keys = mixer_cls(n_agents=N_AGENTS, device="cpu"), [("agents", "chosen_action_value")]
    else:
        module, in_keys = mixer_cls((S,), 8, N_AGENTS, "cpu"), [("agents", "chosen_action_value"), "state"]
    mixer = TensorDictModule(module, in_keys=in_keys, out_keys=["chosen_action_value"])
    return loss_cls(qnet, mixer, action_space=action_space, **loss_kwargs)


def _loss_data(action_space="categorical", seed=2):
    g = torch.Generator().manual_seed(seed)
    action = torch.randint(N_ACTIONS, (BATCH, N_AGENTS), generator=g)
    if action_space == "one-hot":
        action = torch.nn.functional.one_hot(action, N_ACTIONS)
    return TensorDict({
        "agents": TensorDict({"observation": torch.randn(BATCH, N_AGENTS, OBS, generator=g),
                              "action": action}, [BATCH, N_AGENTS]),
        "state": torch.randn(BATCH, S, generator=g),
        "next": TensorDict({
            "agents": TensorDict({"observation": torch.randn(BATCH, N_AGENTS, OBS, generator=g)},
                                 [BATCH, N_AGENTS]),
            "state": torch.randn(BATCH, S, generator=g),
            "reward": torch.randn(BATCH, 1, generator=g),
            "done": torch.rand(BATCH, 1, generator=g) < 0.2,
            "terminated": torch.rand(BATCH, 1, generator=g) < 0.1,
        }, [BATCH]),
    }, [BATCH])


def _loss_step(loss, data):
    out = loss(data)
    loss.zero_grad()
    out["loss"].backward()
    return out, {k: p.grad for k, p in loss.named_parameters() if p.grad is not None}


def _assert_losses_agree(expected_loss, actual_loss, expected_data, actual_data, rel, priority="td_error"):
    (e_out, e_grads), (a_out, a_grads) = expected_loss, actual_loss
    assert a_out.keys() == e_out.keys() == {"loss"}
    _scaled_close(a_out["loss"], e_out["loss"], rel, "loss")
    assert actual_data[priority].shape == expected_data[priority].shape == (BATCH, 1)
    _scaled_close(actual_data[priority], expected_data[priority], 10 * rel, "priority")
    assert a_grads.keys() == e_grads.keys() and e_grads
    for name, g in e_grads.items():
        _scaled_close(a_grads[name], g, 10 * rel, name)


@pytest.mark.parametrize("delay_value", [True, False])
@pytest.mark.parametrize("estimator", [None, ValueEstimators.TD1, ValueEstimators.TDLambda])
@pytest.mark.parametrize("action_space,loss_function", [("categorical", "l2"), ("one-hot", "smooth_l1")])
def test_loss_matches_torchrl(delay_value, estimator, action_space, loss_function, monkeypatch):
    kwargs = dict(action_space=action_space, delay_value=delay_value, loss_function=loss_function)
    theirs = _build_loss(TorchRLQMixer, TorchRLQMixerLoss, **kwargs)
    ours = _build_loss(QMixer, QMixerLoss, **kwargs)
    if estimator is not None:
        theirs.make_value_estimator(estimator, gamma=0.9)
        ours.make_value_estimator(estimator, gamma=0.9)
    if delay_value:
        # Target networks that differ from the online ones, as after training.
        for loss in (theirs, ours):
            with torch.no_grad():
                for p in loss.target_mixer_network_params.values(True, True):
                    p.mul_(0.5)
    assert ours.in_keys == theirs.in_keys and ours.out_keys == theirs.out_keys
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    fused = []
    monkeypatch.setattr(QMixerLoss, "_mix", lambda self, *a, _f=QMixerLoss._mix: fused.append(1) or _f(self, *a))
    expected_data, actual_data = _loss_data(action_space), _loss_data(action_space)
    expected = _loss_step(theirs, expected_data)
    actual = _loss_step(ours, actual_data)
    assert len(fused) == 2, "the online and target mixers should run as fused calls from the loss"
    _assert_losses_agree(expected, actual, expected_data, actual_data, 2e-6)


def test_loss_after_target_update_and_optimizer_step():
    theirs = _build_loss(TorchRLQMixer, TorchRLQMixerLoss, delay_value=True)
    ours = _build_loss(QMixer, QMixerLoss, delay_value=True)
    for loss in (theirs, ours):
        updater = SoftUpdate(loss, eps=0.5)
        optim = torch.optim.SGD(loss.parameters(), lr=0.1)
        for step in range(2):
            out = loss(_loss_data(seed=10 + step))
            optim.zero_grad()
            out["loss"].backward()
            optim.step()
            updater.step()
    expected_data, actual_data = _loss_data(seed=20), _loss_data(seed=20)
    _assert_losses_agree(_loss_step(theirs, expected_data), _loss_step(ours, actual_data),
                         expected_data, actual_data, 2e-5)


@pytest.mark.parametrize("mixer_cls", [TorchRLQMixer, TorchRLVDNMixer, VDNMixer])
def test_loss_with_other_mixers_is_torchrls(mixer_cls):
    theirs = _build_loss(mixer_cls, TorchRLQMixerLoss)
    ours = _build_loss(mixer_cls, QMixerLoss)
    assert not ours._fast_path()
    expected_data, actual_data = _loss_data(), _loss_data()
    (e_out, e_grads), (a_out, a_grads) = _loss_step(theirs, expected_data), _loss_step(ours, actual_data)
    assert torch.equal(a_out["loss"], e_out["loss"])
    assert torch.equal(actual_data["td_error"], expected_data["td_error"])
    assert all(torch.equal(a_grads[k], g) for k, g in e_grads.items())


def test_loss_custom_priority_key_and_fastmarl_mixer_in_torchrl_loss():
    theirs = _build_loss(TorchRLQMixer, TorchRLQMixerLoss)
    ours = _build_loss(QMixer, QMixerLoss)
    for loss in (theirs, ours):
        loss.set_keys(priority="prio")
    expected_data, actual_data = _loss_data(), _loss_data()
    _assert_losses_agree(_loss_step(theirs, expected_data), _loss_step(ours, actual_data),
                         expected_data, actual_data, 2e-6, priority="prio")
    # A fastmarl QMixer in TorchRL's own loss: the module swap path, same numbers.
    mixed = _build_loss(QMixer, TorchRLQMixerLoss)
    mixed.set_keys(priority="prio")
    mixed_data = _loss_data()
    _assert_losses_agree(_loss_step(theirs, expected_data), _loss_step(mixed, mixed_data),
                         expected_data, mixed_data, 2e-6, priority="prio")


SEED_PAGE_QMIX_EXAMPLE = """
import torch
from torch import nn
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.modules import QValueModule, SafeSequential
{imports}

n_agents, obs_dim, n_actions = 4, 10, 3
state_shape = (64, 64, 3)

# Per-agent Q-network
q_module = TensorDictModule(
    nn.Linear(obs_dim, n_actions),
    in_keys=[("agents", "observation")],
    out_keys=[("agents", "action_value")],
)
value_module = QValueModule(
    action_value_key=("agents", "action_value"),
    out_keys=[
        ("agents", "action"),
        ("agents", "action_value"),
        ("agents", "chosen_action_value"),
    ],
    action_space="categorical",
)
qnet = SafeSequential(q_module, value_module)

# QMIX mixer
qmixer = TensorDictModule(
    module=QMixer(
        state_shape=state_shape,
        mixing_embed_dim=32,
        n_agents=n_agents,
        device="cpu",
    ),
    in_keys=[("agents", "chosen_action_value"), "state"],
    out_keys=["chosen_action_value"],
)

loss = QMixerLoss(qnet, qmixer, action_space="categorical")

# Data with agent dimension and global state
td = TensorDict({
    "agents": TensorDict(
        {"observation": torch.zeros(32, n_agents, obs_dim)}, [32, n_agents]
    ),
    "state": torch.zeros(32, *state_shape),
    "next": TensorDict({
        "agents": TensorDict(
            {"observation": torch.zeros(32, n_agents, obs_dim)}, [32, n_agents]
        ),
        "state": torch.zeros(32, *state_shape),
        "reward": torch.zeros(32, 1),
        "done": torch.zeros(32, 1, dtype=torch.bool),
        "terminated": torch.zeros(32, 1, dtype=torch.bool),
    }, [32]),
}, [32])

loss_td = loss(qnet(td))
print(loss_td["loss"])
"""


def test_seed_page_qmix_example_by_import_swap(capsys):
    # The TorchRL multi-agent objectives page's "Complete QMIX Example", verbatim but for the
    # two imports; its state is a 64x64x3 image, flattened by the mixer as TorchRL does.
    results = {}
    for name, imports in [
        ("torchrl", "from torchrl.modules.models.multiagent import QMixer\n"
                    "from torchrl.objectives.multiagent import QMixerLoss"),
        ("fastmarl", "from fastmarl.modules.models.multiagent import QMixer\n"
                     "from fastmarl.objectives.multiagent import QMixerLoss"),
    ]:
        torch.manual_seed(0)
        namespace = {}
        exec(SEED_PAGE_QMIX_EXAMPLE.replace("{imports}", imports), namespace)
        results[name] = namespace
    assert isinstance(results["fastmarl"]["loss"], QMixerLoss)
    assert results["fastmarl"]["loss"]._fast_path()
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and all(line.startswith("tensor(") for line in printed)
    expected, actual = results["torchrl"]["loss_td"]["loss"], results["fastmarl"]["loss_td"]["loss"]
    _scaled_close(actual, expected, 2e-6, "loss")
    assert expected.item() > 0  # the zero-state example still has a nonzero Bellman error
    _scaled_close(results["fastmarl"]["td"]["td_error"], results["torchrl"]["td"]["td_error"], 2e-5, "td_error")


# --------------------------------------------------------------------------- CUDA


@requires_cuda
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("n,embed,batch", [(1, 8, 1), (3, 32, 33), (8, 32, 4096), (32, 64, 4096), (5, 20, 1000)])
def test_cuda_kernels_match_float64_reference(n, embed, batch, layers):
    torch.manual_seed(0)
    mixer = QMixer((S,), embed, n, hypernet_layers=layers).double()
    q, state = make_inputs(batch, n, S, dtype=torch.float64)
    cot = torch.randn(batch, 1, dtype=torch.float64)
    expected, expected_grads = _run(mixer, q.unsqueeze(-1), state, cot)
    cuda_mixer = mixer.float().cuda()
    out, grads = _run(cuda_mixer, q.unsqueeze(-1).float().cuda(), state.float().cuda(), cot.float().cuda())
    # fp32 (ieee tl.dot) over S=37 and n*E products, against float64
    _scaled_close(out, expected, 2e-5, "q_tot")
    for name, g in expected_grads.items():
        _scaled_close(grads[name], g, 5e-5, name)


@requires_cuda
def test_cuda_image_state_half_inputs_and_compile():
    torch.manual_seed(0)
    mixer = QMixer((64, 64, 3), 32, 4).cuda()
    q, state = torch.randn(32, 4, 1, device="cuda"), torch.randn(32, 64, 64, 3, device="cuda")
    expected = reference.qmix_reference(q.double(), state.double(), [p.double() for p in mixer.mixer_params()])
    _scaled_close(mixer(q, state), expected, 1e-4, "image state")
    _scaled_close(mixer(q.half(), state.half()), expected, 1e-2, "half inputs")
    compiled = torch.compile(mixer, fullgraph=True, dynamic=True)
    _scaled_close(compiled(q, state), expected, 1e-4, "compiled")


@requires_cuda
def test_cuda_wide_mixer_takes_the_torch_path():
    # E=256 is wider than the kernels' register tiles (MAX_BLOCK_E): same numbers via torch.
    mixer = QMixer((S,), 256, 3).cuda()
    q, state = torch.randn(40, 3, 1, device="cuda"), torch.randn(40, S, device="cuda")
    expected = reference.qmix_reference(q.double(), state.double(), [p.double() for p in mixer.mixer_params()])
    _scaled_close(mixer(q, state), expected, 1e-4, "q_tot")


def test_module_imports_are_the_drop_in_paths():
    assert fastmarl.modules.QMixer is fm_multiagent.QMixer is QMixer
    assert issubclass(QMixer, TorchRLQMixer)


@pytest.mark.qmix_dispatch
def test_compiled_half_precision_inputs_go_through_the_op():
    # TorchRL's math does not take float16 inputs with float32 parameters; under torch.compile
    # mix() then calls fastmarl::qmix, which accumulates in float32 as the eager path does.
    torch.manual_seed(0)
    mixer = QMixer((S,), 16, 3)
    q, state = make_inputs(40, 3, S, dtype=torch.float16)
    eager = mixer(q.unsqueeze(-1), state)
    compiled = torch.compile(mixer, fullgraph=True, backend="aot_eager")(q.unsqueeze(-1), state)
    assert compiled.dtype == torch.float32
    assert_close(compiled, eager, atol=1e-6, rtol=1e-6)
    compiled.sum().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in mixer.parameters())
