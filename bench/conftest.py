"""pytest-benchmark setup shared by the suites in bench/.

Options:
    --bench-device cpu|cuda      where to run (default: cuda when available, else cpu)
    --bench-sizes a,b,...        size names to run (default: every size but ``tiny``); CI runs
                                 ``--bench-sizes tiny --benchmark-disable`` as a smoke test.
                                 The names are shared by every suite (tiny, tutorial, benchmarl,
                                 large, long; bench_qmix.py maps them onto its B<batch>-n<agents>
                                 grid, see ``fastmarl.bench_report.SIZE_ALIASES``); a suite's own
                                 names work too. A suite without a size of that name skips it with
                                 a reason; a name no suite knows is a usage error.

The JSON written by ``--benchmark-json`` carries the device name and the torch, triton and
torchrl versions in ``machine_info``, so a committed result says where it was measured.
"""

from __future__ import annotations

import importlib.metadata
import pytest
import torch


def pytest_addoption(parser):
    group = parser.getgroup("fastmarl benchmarks")
    group.addoption("--bench-device", default=None, choices=["cpu", "cuda"],
                    help="device to benchmark on (default: cuda when available, else cpu)")
    group.addoption("--bench-sizes", default=None,
                    help="comma-separated size names to run (default: all but tiny)")


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def pytest_benchmark_update_machine_info(config, machine_info):
    device = bench_device_of(config)
    machine_info["fastmarl"] = {
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else machine_info.get("cpu", {}).get("brand_raw"),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "torchrl": _version("torchrl"),
        "tensordict": _version("tensordict"),
        "cuda": torch.version.cuda,
        "torch_num_threads": torch.get_num_threads(),
    }


def bench_device_of(config) -> str:
    device = config.getoption("--bench-device")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return device


@pytest.fixture(scope="session")
def bench_device(request) -> str:
    device = bench_device_of(request.config)
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("--bench-device cuda, but no CUDA device is available")
    return device


def pytest_collection_modifyitems(config, items):
    from benchutil import KNOWN_SIZES

    wanted = config.getoption("--bench-sizes")
    known = config.stash.get(KNOWN_SIZES, set())
    if wanted and known:
        unknown = [n.strip() for n in wanted.split(",") if n.strip() and n.strip() not in known]
        if unknown:
            raise pytest.UsageError(f"--bench-sizes: unknown size(s) {unknown}; known: {sorted(known)}")
