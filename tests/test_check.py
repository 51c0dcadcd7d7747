"""``fastmarl check``: it passes on the shipped ops and fails, with a non-zero exit code, when
an implementation is wrong or leaves an output element unwritten.

Wrong implementations are injected by monkeypatching the module attribute a path calls (the
torch kernels in ``fastmarl.ops.<op>.cpu``, the launchers in ``fastmarl.ops.<op>.triton``), so
the check runs exactly as a user runs it, on code that is wrong.
"""

import json
import math

import pytest
import torch
from helpers import requires_interpreter

from fastmarl import check
from fastmarl.cli import main as cli_main
from fastmarl.ops.gae import cpu as gae_cpu

QUICK = ["--device", "cpu", "--quick", "--no-speed", "--dtypes", "float32"]


def test_passes_on_the_shipped_ops(capsys):
    assert check.main([*QUICK, "--ops", "gae,ppo_critic"]) == 0
    out = capsys.readouterr().out
    assert "gae" in out and "ppo_critic" in out and "FAIL" not in out
    assert "paths composite/op" in out  # GAE has no fused path


def test_a_wrong_torch_kernel_fails(monkeypatch, capsys):
    real = gae_cpu.gae_forward

    def off_by_a_little(*args, **kwargs):
        advantage, value_target = real(*args, **kwargs)
        return advantage * (1 + 1e-3), value_target

    monkeypatch.setattr(gae_cpu, "gae_forward", off_by_a_little)
    assert check.main([*QUICK, "--ops", "gae"]) == 1
    out = capsys.readouterr().out
    # the op path calls the patched kernel; the composite path does not and still passes
    assert "path=op" in out and "path=composite" not in out
    assert "advantage error" in out


def test_an_unwritten_element_fails(monkeypatch, capsys):
    # A kernel that forgets the last time step of its output: the buffer comes from
    # torch.empty, which the check fills with NaN.
    real = gae_cpu.gae_forward

    def forgets_a_step(*args, **kwargs):
        advantage, value_target = real(*args, **kwargs)
        holey = torch.empty_like(advantage)
        holey[:, :-1] = advantage[:, :-1]
        return holey, value_target

    monkeypatch.setattr(gae_cpu, "gae_forward", forgets_a_step)
    assert check.main([*QUICK, "--ops", "gae", "--paths", "op"]) == 1
    assert "advantage error inf" in capsys.readouterr().out


@requires_interpreter
def test_triton_path_in_the_interpreter_passes_and_catches_a_wrong_kernel(monkeypatch, capsys):
    from fastmarl.ops.ppo import triton as launchers

    args = [*QUICK, "--interpret", "--paths", "triton", "--ops", "ppo_critic"]
    assert check.main(args) == 0
    real = launchers.ppo_critic_bwd

    def wrong_sign(*a, grad_value, **kw):
        real(*a, grad_value=grad_value, **kw)
        grad_value.neg_()

    monkeypatch.setattr(launchers, "ppo_critic_bwd", wrong_sign)
    assert check.main(args) == 1
    assert "d_value error" in capsys.readouterr().out


@requires_interpreter
def test_an_unwritten_triton_output_fails(monkeypatch, capsys):
    from fastmarl.ops.gae import triton as launchers

    real = launchers.gae_fwd

    def skips_value_target(value, next_value, reward, done, terminated, gamma, lmbda, gamma_tensor,
                           lmbda_tensor, advantage, value_target, **kw):
        scratch = torch.empty_like(value_target)  # the op's own buffer stays as allocated
        real(value, next_value, reward, done, terminated, gamma, lmbda, gamma_tensor, lmbda_tensor,
             advantage, scratch, **kw)

    monkeypatch.setattr(launchers, "gae_fwd", skips_value_target)
    assert check.main([*QUICK, "--interpret", "--paths", "triton", "--ops", "gae"]) == 1
    assert "value_target error inf" in capsys.readouterr().out


def test_speed_rows_and_json(tmp_path, capsys):
    path = tmp_path / "check.json"
    assert check.main(["--device", "cpu", "--quick", "--ops", "qmix", "--dtypes", "float32", "--paths", "op",
                       "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "qmix mixer" in out and "x eager" in out
    data = json.loads(path.read_text())
    assert data["passed"] and data["device"] == "cpu" and data["results"]
    assert {"fastmarl", "torchrl"} <= set(data["speed"][0]["ms"])
    assert all(r["path"] == "op" and r["dtype"] == "float32" for r in data["results"])


def test_bad_usage_exits_2(capsys):
    assert cli_main(["check", "--ops", "gea"]) == 2
    assert "--ops: unknown name(s) ['gea']" in capsys.readouterr().err
    assert check.main(["--device", "cpu", "--paths", "triton", "--ops", "gae"]) == 2  # no --interpret
    if not torch.cuda.is_available():
        assert check.main(["--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err


def test_rel_error():
    ref = torch.tensor([1.0, 2.0, float("nan"), float("inf")])
    assert check.rel_error(ref.clone(), ref) == 0.0
    assert check.rel_error(torch.tensor([1.0, 2.0, 0.0, float("inf")]), ref) == math.inf  # NaN lost
    assert check.rel_error(torch.tensor([1.0, float("nan"), float("nan"), float("inf")]), ref) == math.inf
    assert check.rel_error(torch.tensor([1.0, 2.0, float("nan"), -float("inf")]), ref) == math.inf
    assert check.rel_error(torch.ones(3), torch.ones(4)) == math.inf
    assert check.rel_error(torch.tensor([3.0, 4.0]), torch.zeros(2)) == 5.0  # absolute at 0
    # a sum that cancels to nearly 0 is judged against the magnitude of its terms
    assert check.rel_error(torch.tensor(1e-6), torch.tensor(0.0), torch.tensor(1.0)) == pytest.approx(1e-6)
    # rounding to the output's dtype is no error (float16 subnormals: an absolute spacing)...
    ref = torch.tensor([1e-6, 3e-6, 1.0], dtype=torch.float64) * 1e-1
    assert check.rel_error(ref.half(), ref) == 0.0
    # ...but anything beyond it is
    assert check.rel_error(ref.half() * 1.01, ref) > 5e-3


def test_poisoned_empty_is_scoped():
    before = torch.are_deterministic_algorithms_enabled()
    with check.poisoned_empty():
        assert torch.empty(5).isnan().all()
    assert torch.are_deterministic_algorithms_enabled() == before
