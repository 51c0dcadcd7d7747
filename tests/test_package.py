"""Packaging, import and CLI checks."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_python(code: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
        cwd=cwd, env={**os.environ, **(env or {})},
    )


def test_imports_and_runs_without_triton(tmp_path):
    # A meta-path hook hides Triton, as on a machine where it is not installed.
    code = """
import sys, importlib.abc
class NoTriton(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ImportError("triton hidden by the test")
sys.meta_path.insert(0, NoTriton())
import importlib.util
importlib.util.find_spec = (lambda f: (lambda name, *a: None if name == "triton" else f(name, *a)))(importlib.util.find_spec)
import torch, fastmarl
from fastmarl.objectives.value.functional import generalized_advantage_estimate
assert not fastmarl.HAS_TRITON
v = torch.randn(2, 5, 3, 1)
adv, vt = generalized_advantage_estimate(0.9, 0.9, v, v, v, torch.zeros(2, 5, 3, 1, dtype=torch.bool))
assert "triton" not in sys.modules
print("ok", tuple(adv.shape))
"""
    result = _run_python(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ok (2, 5, 3, 1)" in result.stdout
    # torch warns once per triton_op registration without Triton; fastmarl silences that noise.
    assert "Triton not available" not in result.stderr, result.stderr


def test_kernels_installed_as_fastmarl_kernels_not_top_level(tmp_path):
    # Outside the repo, `kernels` must not resolve to ours (a `kernels` package exists on PyPI).
    code = """
import importlib.util, fastmarl.kernels.gae as k
spec = importlib.util.find_spec("kernels")
print(k.__name__, spec.origin if spec else None)
"""
    result = _run_python(code, cwd=tmp_path, env={"PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr
    name, origin = result.stdout.split()
    assert name == "fastmarl.kernels.gae"
    assert origin == "None" or not origin.startswith(str(ROOT))


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    test_commands = [c for c in commands if "pytest" in c and c.startswith("pip install")]
    assert test_commands, "README has no quick-start test command"
    assert test_commands[0].strip() in ci, "the .ci/run test command differs from the README's"


def test_cli_help_and_bad_options():
    ok = subprocess.run([sys.executable, "-m", "fastmarl", "demo", "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "--envs" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "fastmarl", "demo", "--envs", "-3"], capture_output=True, text=True)
    assert bad.returncode == 2 and "expected a positive integer, got -3" in bad.stderr


@pytest.mark.slow_cli
def test_demo_runs_and_agrees_with_torchrl():
    result = subprocess.run(
        [sys.executable, "-m", "fastmarl", "demo", "--envs", "4", "--steps", "20", "--repeats", "2"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "max |fastmarl - torchrl|: advantage 0, value_target 0" in result.stdout
