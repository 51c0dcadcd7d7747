"""The drop-in QMixer and VDNMixer modules: TorchRL's initialisation and state_dict, EPyMARL's
two-layer hypernetworks, batch and state shapes, strides, half inputs, compile, bad input."""

import pytest
import torch
from helpers import assert_close, requires_cuda
from qmix_cases import S, make_inputs, run_mixer, scaled_close, torchrl_twin
from torchrl.modules.models.multiagent import QMixer as TorchRLQMixer
from torchrl.modules.models.multiagent import VDNMixer as TorchRLVDNMixer

import fastmarl
import fastmarl.modules.models.multiagent as fm_multiagent
from fastmarl.modules import QMixer, VDNMixer
from fastmarl.ops.qmix.naive import qmix as qmix_reference


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
    scaled_close(actual, expected, 2e-6, "q_tot")
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
    ],
)
def test_batch_dims_and_state_shape_like_torchrl(q_shape, state_shape, mixer_state_shape):
    torch.manual_seed(0)
    mixer = QMixer(mixer_state_shape, 8, 3)
    twin = torchrl_twin(mixer)
    q, state = torch.randn(q_shape), torch.randn(state_shape)
    expected = twin(q, state)
    actual = mixer(q, state)
    assert actual.shape == expected.shape == (*q_shape[:-2], 1)
    scaled_close(actual, expected, 2e-6, "q_tot")


def test_non_contiguous_inputs():
    torch.manual_seed(0)
    mixer = QMixer((S,), 16, 4).double()
    q = torch.randn(4, 30, 1, dtype=torch.float64).transpose(0, 1)  # [30, 4, 1], strided
    state = torch.randn(30, 2 * S, dtype=torch.float64)[:, ::2]
    assert not q.is_contiguous() and not state.is_contiguous()
    expected = qmix_reference(q, state, mixer.mixer_params())
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
    expected = qmix_reference(q.double().unsqueeze(-1), state.double(),
                              mixer.mixer_params().map(lambda p: p.double()))
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
        out, grads = run_mixer(compiled, q.unsqueeze(-1), state, cot)
        expected, expected_grads = run_mixer(mixer, q.unsqueeze(-1), state, cot)
        # On the CPU the compiled mixer is TorchRL's math traced by Inductor: float64 ulps.
        assert_close(out, expected, atol=1e-12, rtol=1e-12)
        for name, g in expected_grads.items():
            scaled_close(grads[name], g, 1e-12, name)


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
        # The same number of samples in other batch dims (TorchRL reshapes and mixes q of one
        # sample with the state of another): an error naming both shapes.
        (torch.randn(8, 5, 3, 1), torch.randn(5, 8, S), ValueError,
         r"state has shape \(5, 8, 37\), expected \[\*B, \*state_shape\] = \(8, 5, 37\): its batch dims must be"),
        (torch.randn(24, 3, 1), torch.randn(4, 6, S), ValueError, r"its batch dims must be chosen_action_value's \(24,\)"),
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


# --------------------------------------------------------------------------- CUDA


@requires_cuda
def test_cuda_image_state_half_inputs_and_compile():
    torch.manual_seed(0)
    mixer = QMixer((64, 64, 3), 32, 4).cuda()
    q, state = torch.randn(32, 4, 1, device="cuda"), torch.randn(32, 64, 64, 3, device="cuda")
    expected = qmix_reference(q.double(), state.double(), mixer.mixer_params().map(lambda p: p.double()))
    scaled_close(mixer(q, state), expected, 1e-4, "image state")
    scaled_close(mixer(q.half(), state.half()), expected, 1e-2, "half inputs")
    compiled = torch.compile(mixer, fullgraph=True, dynamic=True)
    scaled_close(compiled(q, state), expected, 1e-4, "compiled")


@requires_cuda
def test_cuda_wide_mixer_takes_the_torch_path():
    # E=256 is wider than the kernels' register tiles (MAX_BLOCK_E): same numbers via torch.
    mixer = QMixer((S,), 256, 3).cuda()
    q, state = torch.randn(40, 3, 1, device="cuda"), torch.randn(40, S, device="cuda")
    expected = qmix_reference(q.double(), state.double(), mixer.mixer_params().map(lambda p: p.double()))
    scaled_close(mixer(q, state), expected, 1e-4, "q_tot")


def test_module_imports_are_the_drop_in_paths():
    assert fastmarl.modules.QMixer is fm_multiagent.QMixer is QMixer
    assert issubclass(QMixer, TorchRLQMixer)


def test_errors_start_with_torchrls_messages():
    # Code written against TorchRL's QMixer may match on its messages (TorchRL's own
    # test_mixer_malformed_input does): each check TorchRL makes raises with TorchRL's sentence
    # first, in TorchRL's order (the state before the Q-values), then fastmarl's detail.
    ours, theirs = QMixer((S,), 8, 3), TorchRLQMixer((S,), 8, 3, "cpu")
    cases = [
        ((torch.randn(4, 3, 1),), r"^Mixer that needs state was passed more than 2 inputs"),
        ((torch.randn(4, 3, 2), torch.randn(4, S)),
         r"^Mixer network expected chosen_action_value with last 2 dimensions \(3, 1\)"),
        ((torch.randn(4, 3, 2), torch.randn(4, S, 1)), r"^Mixer network expected state with ending shape"),
    ]
    for inputs, match in cases:
        for mixer in (ours, theirs):
            with pytest.raises(ValueError, match=match):
                mixer(*inputs)
