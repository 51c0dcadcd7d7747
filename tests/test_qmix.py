"""The QMIX mixer op (``fastmarl.ops.qmix``): float64 oracle on every CPU path, TorchRL parity,
the path policy, the CPU kernels' chunking, opcheck, gradcheck, compile of the op, bad input to
the op, and the CUDA kernels. The module is tested in test_qmix_module.py, the loss in
test_qmix_loss.py, the Triton kernels in the interpreter in test_qmix_triton.py."""

from contextlib import nullcontext

import pytest
import torch
from helpers import assert_close, requires_cuda
from qmix_cases import S, make_inputs, make_params, run_mixer, scaled_close, torchrl_twin
from torchrl.modules.models.multiagent import QMixer as TorchRLQMixer

from fastmarl.functional import qmix_mixer
from fastmarl.modules import QMixer
from fastmarl.ops import Path, force_path
from fastmarl.ops.qmix import MODULE_PARAM_NAMES, QMixParams, cpu, select_path
from fastmarl.ops.qmix.naive import qmix as qmix_reference
from fastmarl.ops.qmix.op import SMALL_BATCH, SMALL_FORWARD_WORK


def _requires_grad(params: QMixParams) -> QMixParams:
    return params.map(lambda x: x.detach().clone().requires_grad_())


# --------------------------------------------------------------------------- semantics


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_composite_path_gives_torchrl_bits_and_oracle_agrees(dtype):
    torch.manual_seed(0)
    mixer = TorchRLQMixer((S,), 32, 8, "cpu").to(dtype)
    q, state = torch.randn(65, 8, dtype=dtype), torch.randn(65, S, dtype=dtype)
    named = dict(mixer.named_parameters())
    params = QMixParams(*(named[name] for name in MODULE_PARAM_NAMES[1]))
    expected = mixer(q.unsqueeze(-1), state)
    assert torch.equal(cpu.qmix_composite(q, state, params), expected)
    assert_close(qmix_reference(q.unsqueeze(-1), state, params), expected, atol=1e-5, rtol=1e-5)


def test_param_order_is_the_modules():
    for layers in (1, 2):
        mixer = QMixer((S,), 8, 3, hypernet_layers=layers)
        named = dict(mixer.named_parameters())
        assert sorted(named) == sorted(MODULE_PARAM_NAMES[layers])
        for name, p in zip(MODULE_PARAM_NAMES[layers], mixer.mixer_params().flat()):
            assert named[name] is p, name


# --------------------------------------------------------------------------- float64 oracle

SIZES = [(n, e, 33) for n in (1, 3, 8, 32) for e in (8, 32, 64)]
SIZES += [(3, 32, 1), (8, 32, 1), (1, 8, 4096), (8, 32, 4096), (32, 64, 4096)]
# The fused kernels at every size; the composite path (TorchRL's op sequence, checked bit for bit
# against TorchRL elsewhere) at the small ones, which cover its two-layer variant.
GRID = [pytest.param(n, e, b, path, id=f"{path}-n{n}-E{e}-B{b}")
        for path in ("fused", "composite") for n, e, b in SIZES if path == "fused" or b <= 33]


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("n,embed,batch,path", GRID)
def test_mixer_and_gradients_match_float64_reference(n, embed, batch, path, layers):
    with force_path(path, "qmix"):
        _check_mixer_against_float64_reference(n, embed, batch, layers)


def _check_mixer_against_float64_reference(n, embed, batch, layers):
    torch.manual_seed(0)
    mixer = QMixer((S,), embed, n, hypernet_layers=layers, hypernet_embed=24).double()
    q, state = make_inputs(batch, n, S, dtype=torch.float64)
    q = q.unsqueeze(-1)
    cot = torch.randn(batch, 1, dtype=torch.float64)
    out, grads = run_mixer(mixer, q, state, cot)

    ref_q, ref_state = q.clone().requires_grad_(), state.clone().requires_grad_()
    params = _requires_grad(mixer.mixer_params())
    ref = qmix_reference(ref_q, ref_state, params)
    ref.backward(cot)
    assert out.shape == ref.shape == (batch, 1)
    assert_close(out, ref, atol=1e-12, rtol=1e-12, name="q_tot")
    assert_close(grads["q"], ref_q.grad, atol=1e-12, rtol=1e-10, name="d_q")
    assert_close(grads["state"], ref_state.grad, atol=1e-12, rtol=1e-10, name="d_state")
    for name, p in zip(MODULE_PARAM_NAMES[layers], params.flat()):
        scaled_close(grads[name], p.grad, 1e-12, name)


def _cpu_kernels(q, state, params, cot, chunk_elements):
    # The CPU kernels called directly, with their chunk size as an argument.
    q_tot, hidden_pre, z1, z2 = cpu.qmix_forward(q, state, params, True, chunk_elements=chunk_elements)
    grads = cpu.qmix_backward(cot, q, state, params, hidden_pre, z1, z2, True, chunk_elements=chunk_elements)
    return q_tot, grads


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("chunk_elements", [1 << 20, 1 << 12])
def test_wide_state_small_batch_matches_float64_reference(layers, chunk_elements):
    # B < 512 with C1*S >= 2**18 elements: the CPU kernel runs four GEMMs instead of
    # concatenating the weights (in one chunk, and in three of 16 samples).
    params = make_params(8, 32, 1440, hidden=64 if layers == 2 else 0, dtype=torch.float64)
    q, state = make_inputs(33, 8, 1440, dtype=torch.float64)
    cot = torch.randn(33, 1, dtype=torch.float64)
    out, grads = _cpu_kernels(q, state, params, cot, chunk_elements)
    ref_q, ref_state = q.clone().requires_grad_(), state.clone().requires_grad_()
    ref_params = _requires_grad(params)
    ref = qmix_reference(ref_q.unsqueeze(-1), ref_state, ref_params)
    ref.backward(cot)
    assert_close(out, ref, atol=1e-12, rtol=1e-12, name="q_tot")
    for name, actual, expected in zip(("q", "state", *MODULE_PARAM_NAMES[layers]), grads,
                                      (ref_q.grad, ref_state.grad, *(p.grad for p in ref_params.flat()))):
        scaled_close(actual, expected, 1e-12, name)


def test_chunked_cpu_kernels_match_one_chunk():
    # A few samples per chunk: every chunk boundary and the partial last chunk at a small size.
    for layers in (1, 2):
        params = make_params(3, 8, S, hidden=16 if layers == 2 else 0, dtype=torch.float64)
        q, state = make_inputs(23, 3, S, dtype=torch.float64)
        cot = torch.randn(23, 1, dtype=torch.float64)
        out, grads = _cpu_kernels(q, state, params, cot, 80)
        expected, expected_grads = _cpu_kernels(q, state, params, cot, 1 << 20)
        assert_close(out, expected, atol=1e-13, rtol=1e-13)
        for a, e in zip(grads, expected_grads):
            scaled_close(a, e, 1e-13, "grad")
        # Without residuals the forward reuses one chunk of scratch.
        no_grad = cpu.qmix_forward(q, state, params, False, chunk_elements=80)[0]
        assert torch.equal(no_grad, out)


@pytest.mark.parametrize("path", ["fused", "policy"])
@pytest.mark.parametrize("n,embed,batch", [(1, 8, 33), (3, 32, 1), (8, 32, 4096), (32, 64, 33), (8, 64, 4096)])
def test_float32_matches_torchrl_qmixer(n, embed, batch, path):
    torch.manual_seed(0)
    mixer = QMixer((S,), embed, n)
    twin = torchrl_twin(mixer)
    q, state = make_inputs(batch, n, S)
    cot = torch.randn(batch, 1)
    with force_path("fused", "qmix") if path == "fused" else nullcontext():
        out, grads = run_mixer(mixer, q.unsqueeze(-1), state, cot)
    expected, expected_grads = run_mixer(twin, q.unsqueeze(-1), state, cot)
    assert out.dtype == expected.dtype == torch.float32
    scaled_close(out, expected, 2e-6, "q_tot")
    assert expected_grads.keys() == grads.keys()
    for name, g in expected_grads.items():
        scaled_close(grads[name], g, 2e-5, name)


# --------------------------------------------------------------------------- the path policy


def test_fused_path_and_op_agree_bit_for_bit():
    # The fused path runs the CPU kernels in an autograd.Function; fastmarl::qmix sends CPU
    # tensors to the same kernels behind its op boundary: the same bits.
    batch = SMALL_BATCH + 45
    params = make_params(5, 16, S, dtype=torch.float64).map(lambda x: x.requires_grad_())
    q, state = make_inputs(batch, 5, S, dtype=torch.float64)
    q.requires_grad_()
    state.requires_grad_()
    assert select_path(q, state, params, True) is Path.FUSED
    cot = torch.randn(batch, 1, dtype=torch.float64)
    results = []
    for path in ("fused", "op"):
        with force_path(path, "qmix"):
            out = qmix_mixer(q, state, params)
        results.append((out, *torch.autograd.grad(out, [q, state, *params.flat()], cot)))
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("hypernet_layers", [1, 2])
def test_small_batch_with_grad_runs_torchrls_op_sequence(hypernet_layers):
    # Below SMALL_BATCH samples the eager CPU path is the composite one: TorchRL's bits (one
    # layer), gradients through plain autograd, close to the fused kernels'.
    batch = SMALL_BATCH - 1
    params = make_params(5, 16, S, hidden=0 if hypernet_layers == 1 else 24).map(lambda x: x.requires_grad_())
    q, state = make_inputs(batch, 5, S)
    q.requires_grad_()
    assert select_path(q, state, params, True) is Path.COMPOSITE
    out = qmix_mixer(q, state, params)
    if hypernet_layers == 1:
        twin = TorchRLQMixer((S,), 16, 5, "cpu")
        twin.load_state_dict(dict(zip(MODULE_PARAM_NAMES[1], params.flat())))
        assert torch.equal(out, twin(q.unsqueeze(-1), state))
    with force_path("fused", "qmix"):
        fused = qmix_mixer(q, state, params)
    assert_close(out, fused, atol=1e-5, rtol=1e-5)
    cot = torch.randn(batch, 1)
    inputs = [q, *params.flat()]
    for a, b in zip(torch.autograd.grad(out, inputs, cot), torch.autograd.grad(fused, inputs, cot)):
        assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("batch", [(SMALL_FORWARD_WORK >> 7) - 1, SMALL_FORWARD_WORK >> 7])
def test_no_grad_forward_switches_to_fused_kernels_by_work(batch):
    # n=4, E=32: B*n*E reaches SMALL_FORWARD_WORK at 2^20 / 128 samples. Below it, the composite
    # path; from it on, the CPU forward kernel without residuals: its bits.
    params = make_params(4, 32, S)
    q, state = make_inputs(batch, 4, S)
    with torch.no_grad():
        out = qmix_mixer(q, state, params)
    small = batch * 4 * 32 < SMALL_FORWARD_WORK
    assert select_path(q, state, params, False) is (Path.COMPOSITE if small else Path.FUSED)
    expected = (cpu.qmix_composite(q, state, params) if small
                else cpu.qmix_forward(q, state, params, False)[0])
    assert torch.equal(out, expected)
    assert_close(out, torch.ops.fastmarl.qmix(q, state, params.flat(), False)[0], atol=1e-5, rtol=1e-5)


def test_no_grad_call_keeps_no_residual_and_matches():
    mixer = QMixer((S,), 16, 4)
    q, state = make_inputs(9, 4, S)
    with torch.no_grad():
        cold = mixer(q.unsqueeze(-1), state)
    params = [p.detach() for p in mixer.mixer_params().flat()]
    q_tot, *residuals = torch.ops.fastmarl.qmix(q, state, params, False)
    assert all(r.numel() == 0 for r in residuals)
    assert torch.equal(cold, q_tot)
    assert torch.equal(cold, mixer(q.unsqueeze(-1), state))


def test_forced_composite_path_refuses_mixed_dtypes():
    params = make_params(3, 8, S)
    q, state = make_inputs(4, 3, S, dtype=torch.float16)
    with force_path("composite", "qmix"), pytest.raises(ValueError, match="composite QMIX path takes float32 or float64"):
        qmix_mixer(q, state, params)


# --------------------------------------------------------------------------- opcheck, gradcheck


def _op_args(layers, dtype=torch.float64):
    params = make_params(3, 8, S, hidden=16 if layers == 2 else 0, dtype=dtype).flat()
    q, state = make_inputs(11, 3, S, dtype=dtype)
    return q, state, params


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("need_residual", [True, False])
def test_opcheck_forward(layers, need_residual):
    q, state, params = _op_args(layers)
    torch.library.opcheck(torch.ops.fastmarl.qmix_cpu.default, (q, state, params, need_residual))
    for x in (q, state, *params):
        x.requires_grad_(need_residual)
    torch.library.opcheck(torch.ops.fastmarl.qmix.default, (q, state, params, need_residual))


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("op", ["qmix_backward", "qmix_backward_cpu"])
@pytest.mark.parametrize("need_state_grad", [False, True])
def test_opcheck_backward(layers, op, need_state_grad):
    q, state, params = _op_args(layers, dtype=torch.float32)
    _, hidden_pre, z1, z2 = torch.ops.fastmarl.qmix(q, state, params, True)
    args = (torch.randn(11, 1), q, state, params, hidden_pre, z1, z2, need_state_grad)
    torch.library.opcheck(getattr(torch.ops.fastmarl, op).default, args)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("path", ["fused", "composite", "op"])
def test_gradcheck_float64(layers, path):
    q, state, params = _op_args(layers)
    inputs = tuple(x.requires_grad_() for x in (q, state, *params))
    with force_path(path, "qmix"):
        assert torch.autograd.gradcheck(lambda q, s, *p: qmix_mixer(q, s, p), inputs)


@pytest.mark.parametrize("path", ["fused", "composite", "op"])
def test_double_backward_is_exact_on_every_path(path):
    # The hand-written backward kernels have no derivative of their own: with create_graph the
    # fused path and the op recompute the forward with the composite path and differentiate it.
    # A Hessian-vector product against the float64 oracle's, and gradgradcheck at a tiny size.
    q, state, params = _op_args(2)
    inputs = [x.requires_grad_() for x in (q, state, *params)]
    ref_inputs = [x.detach().clone().requires_grad_() for x in inputs]
    cot = torch.randn(11, 1, dtype=torch.float64)
    vectors = [torch.randn_like(x) for x in inputs]
    hvps = []
    for args, mix in ((inputs, qmix_mixer), (ref_inputs, _oracle)):
        with force_path(path, "qmix"):
            out = mix(args[0], args[1], args[2:])
        grads = torch.autograd.grad(out, args, cot, create_graph=True)
        hvps.append(torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, vectors)), args,
                                        allow_unused=True, materialize_grads=True))
    for name, a, e in zip(("q", "state", *MODULE_PARAM_NAMES[2]), *hvps):
        scaled_close(a, e, 1e-10, f"hvp_{name}")
    tiny = make_params(2, 4, 3, dtype=torch.float64)
    q, state = (x.requires_grad_() for x in make_inputs(3, 2, 3, dtype=torch.float64))
    with force_path(path, "qmix"):
        assert torch.autograd.gradgradcheck(lambda q, s: qmix_mixer(q, s, tiny), (q, state))


def _oracle(q, state, params):
    return qmix_reference(q.unsqueeze(-1), state, QMixParams.from_flat(list(params)))


# --------------------------------------------------------------------------- torch.compile


@pytest.mark.parametrize("layers", [1, 2])
def test_compile_fullgraph_of_the_op(layers):
    # The op itself under compile (QMixer traces TorchRL's math on CPU; CUDA calls the op).
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


def test_compiled_half_precision_inputs_go_through_the_op():
    # TorchRL's math does not take float16 inputs with float32 parameters; under torch.compile
    # the policy then calls fastmarl::qmix, which accumulates in float32 as the eager path does.
    torch.manual_seed(0)
    mixer = QMixer((S,), 16, 3)
    q, state = make_inputs(40, 3, S, dtype=torch.float16)
    eager = mixer(q.unsqueeze(-1), state)
    compiled = torch.compile(mixer, fullgraph=True, backend="aot_eager")(q.unsqueeze(-1), state)
    assert compiled.dtype == torch.float32
    assert_close(compiled, eager, atol=1e-6, rtol=1e-6)
    compiled.sum().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in mixer.parameters())


# --------------------------------------------------------------------------- bad input


def test_op_rejects_unflattened_inputs_and_wrong_parameters():
    q, state, params = _op_args(1)
    with pytest.raises(ValueError, match=r"q has shape \(11, 3, 1\) and state \(11, 37\), expected \[B, n\]"):
        torch.ops.fastmarl.qmix(q.unsqueeze(-1), state, params, False)
    params[0] = params[0][:, :5]
    with pytest.raises(ValueError, match=r"hyper_w_1.weight has shape \(24, 5\), expected \(24, 37\)"):
        torch.ops.fastmarl.qmix(q, state, params, False)
    with pytest.raises(ValueError, match="expected 10 or 14 parameter tensors, got 9"):
        torch.ops.fastmarl.qmix(q, state, params[:9], False)


@pytest.mark.parametrize(
    "change,error,match",
    [
        (dict(q=torch.randn(11, 3, 1)), ValueError, r"q has shape \(11, 3, 1\), expected a non-empty \[B, n\]"),
        (dict(q=torch.randn(0, 3)), ValueError, r"q has shape \(0, 3\), expected a non-empty \[B, n\]"),
        (dict(state=torch.randn(11, 36)), ValueError, r"state has shape \(11, 36\), expected \[B, S\] = \(11, 37\)"),
        (dict(state=torch.randn(11, 37).long()), TypeError, r"state must be float16, bfloat16, float32 or float64"),
        (dict(q=[[0.0] * 3]), TypeError, r"q must be a torch.Tensor, got list"),
        (dict(state=torch.randn(11, 37, device="meta")), ValueError, r"state is on meta but q is on cpu"),
    ],
)
def test_functional_bad_input_names_the_argument(change, error, match):
    q, state, params = _op_args(1, dtype=torch.float32)
    args = dict(q=q, state=state)
    args.update(change)
    with pytest.raises(error, match=match):
        qmix_mixer(args["q"], args["state"], params)


# --------------------------------------------------------------------------- CUDA


@requires_cuda
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("n,embed,batch", [(1, 8, 1), (3, 32, 33), (8, 32, 4096), (32, 64, 4096), (5, 20, 1000)])
def test_cuda_kernels_match_float64_reference(n, embed, batch, layers):
    torch.manual_seed(0)
    mixer = QMixer((S,), embed, n, hypernet_layers=layers).double()
    q, state = make_inputs(batch, n, S, dtype=torch.float64)
    cot = torch.randn(batch, 1, dtype=torch.float64)
    expected, expected_grads = run_mixer(mixer, q.unsqueeze(-1), state, cot)
    cuda_mixer = mixer.float().cuda()
    out, grads = run_mixer(cuda_mixer, q.unsqueeze(-1).float().cuda(), state.float().cuda(), cot.float().cuda())
    # fp32 (ieee tl.dot) over S=37 and n*E products, against float64
    scaled_close(out, expected, 2e-5, "q_tot")
    for name, g in expected_grads.items():
        scaled_close(grads[name], g, 5e-5, name)


@requires_cuda
def test_cuda_opcheck():
    q, state, params = (x.cuda() if isinstance(x, torch.Tensor) else [p.cuda() for p in x]
                        for x in _op_args(2, dtype=torch.float32))
    for x in (q, state, *params):
        x.requires_grad_()
    torch.library.opcheck(torch.ops.fastmarl.qmix.default, (q, state, params, True))
