"""Helpers shared by the benchmark suites."""

from __future__ import annotations

import itertools

import pytest
import torch


def selected_sizes(config, all_sizes: dict) -> list:
    """The size names this run measures, for ``pytest_generate_tests``."""
    wanted = config.getoption("--bench-sizes")
    names = [n for n in all_sizes if n != "tiny"] if wanted is None else wanted.split(",")
    unknown = [n for n in names if n not in all_sizes]
    if unknown:
        raise pytest.UsageError(f"--bench-sizes: unknown size(s) {unknown}; known: {list(all_sizes)}")
    return names


def synchronize(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


def run_pedantic(benchmark, fn, input_sets, device, *, rounds, warmup_rounds=2):
    """Time ``fn(*inputs)`` with the inputs rotated between rounds and the device synchronised.

    Rotating several input sets keeps a small problem from being timed on a warm cache it
    would not have in training. Returns the last result and the inputs that produced it.
    """
    inputs = itertools.cycle(input_sets)
    last = []

    def timed():
        args = next(inputs)
        out = fn(*args)
        synchronize(device)
        last[:] = [out, args]

    synchronize(device)
    benchmark.pedantic(timed, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
    return tuple(last)


def skip_compiled_in_smoke_run(benchmark, provider: str) -> None:
    """Compiled providers take about a minute each to compile on the CPU machine; a smoke run
    (``--benchmark-disable``, CI) checks the eager providers only. tests/ covers compilation."""
    if provider.endswith("compiled") and benchmark.disabled:
        pytest.skip("compiled provider skipped in a --benchmark-disable smoke run (compile time)")
