"""Every Triton kernel compiles to cubin for sm_90 (H100/H200) and sm_80, without a GPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastmarl.ops.triton_support import HAS_TRITON

# op name -> number of variants in tests/aot_<op>.py (each compiled for two targets)
OPS = {"gae": 10, "ppo": 36, "qmix": 12}


@pytest.mark.skipif(not HAS_TRITON, reason="needs Triton")
@pytest.mark.parametrize("op", list(OPS))
def test_kernels_compile_for_nvidia_targets(op):
    # A fresh process: this one runs Triton in its interpreter (TRITON_INTERPRET=1).
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    script = Path(__file__).with_name("aot_compile.py")
    result = subprocess.run([sys.executable, str(script), op], capture_output=True, text=True,
                            timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert result.stdout.count(": ok") == 2 * OPS[op], result.stdout
