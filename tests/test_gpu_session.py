"""``bench/gpu_session.sh --dry-run``: the GPU session's every part on the CPU, so the one
command a lent GPU runs cannot rot between GPU sessions (tiny sizes, Triton's interpreter)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fastmarl.ops.triton_support import HAS_TRITON

ROOT = Path(__file__).resolve().parent.parent
PARTS = ["env", "tune", "check", "cuda-tests", "targets", "bench-gae", "bench-ppo", "bench-qmix",
         "bench-compiled", "report"]


@pytest.mark.slow_cli
@pytest.mark.skipif(not HAS_TRITON or shutil.which("bash") is None, reason="needs Triton and bash")
def test_dry_run_of_the_gpu_session(tmp_path):
    out = tmp_path / "session"
    # A fresh environment for the script's own processes: not this one's TRITON_INTERPRET.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHON"] = sys.executable
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_session.sh"), "--dry-run", "--pack", str(out)],
                            capture_output=True, text=True, timeout=1200, env=env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    # --pack leaves what the device tool brings back (at most 8 files), the rest in the tarball
    files = sorted(p.name for p in out.iterdir())
    assert files == ["report.md", "session.json", "session.tar.gz", "summary.txt", "tuned_configs.py"], files
    session = json.loads((out / "session.json").read_text())
    parts = {p["part"]: p for p in session["parts"]}
    assert list(parts) == PARTS
    assert all(p["rc"] == 0 for p in parts.values()), parts
    assert session["env"]["dry_run"] is True
    # the check ran the Triton path in the interpreter and passed; the sweep measured every family
    assert session["check"]["passed"] and session["check"]["interpret"]
    assert {r["path"] for r in session["check"]["results"]} == {"triton"}
    assert set(session["tuned"]["table"]["interpreter"]) == {
        "gae_fwd", "gae_bwd", "ppo_clip", "ppo_clip_bwd", "ppo_critic", "ppo_critic_bwd", "qmix_fwd", "qmix_bwd"}
    assert len(session["targets"]["targets"]) == 10
    # the dry run counted the kernel specialisations a GPU would compile (the GPU budget)
    assert parts["check"]["kernels"] > 50 and parts["tune"]["kernels"] > 5
    # the module the sweep wrote is importable and holds the table
    namespace = {}
    exec((out / "tuned_configs.py").read_text(), namespace)
    assert namespace["TABLE"] == session["tuned"]["table"]
    summary = (out / "summary.txt").read_text()
    assert "parts failed or timed out: none" in summary and "GPU compile budget" in summary


def test_usage_errors():
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_session.sh")], capture_output=True, text=True)
    assert result.returncode == 2 and "usage" in result.stderr
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_session.sh"), "--bogus", "x"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "unknown option --bogus" in result.stderr
