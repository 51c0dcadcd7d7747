"""Helpers shared by the benchmark suites."""

from __future__ import annotations

import itertools
import math
import os
import time

import pytest
import torch

from fastmarl.bench_report import SHARED_SIZES

# Every size name a suite declared in this session (checked against --bench-sizes in conftest.py).
KNOWN_SIZES = pytest.StashKey[set]()


def selected_sizes(config, all_sizes: dict, aliases: dict | None = None, suite: str = "this suite") -> list:
    """The sizes this run measures, for ``pytest_generate_tests``.

    ``--bench-sizes`` takes the size names shared by every suite (``SHARED_SIZES``: tiny,
    tutorial, benchmarl, large, long), which ``aliases`` maps to the suite's own names where they
    differ (QMIX's ``B4096-n8``...), and any suite's own names. A name this suite has no size for
    becomes a skipped case that says so; a name no suite knows is a usage error (conftest.py).
    """
    aliases = aliases or {}
    wanted = config.getoption("--bench-sizes")
    known = config.stash.setdefault(KNOWN_SIZES, set())
    known.update(all_sizes, aliases, SHARED_SIZES)
    if wanted is None:
        return [n for n in all_sizes if n != "tiny"]
    params = []
    for name in dict.fromkeys(n.strip() for n in wanted.split(",") if n.strip()):
        if name in all_sizes:
            params.append(name)
        elif name in aliases:
            params += [pytest.param(own, id=own) for own in aliases[name] if own not in params]
        else:
            params.append(pytest.param(name, id=name, marks=pytest.mark.skip(
                reason=f"{suite} has no size {name!r} (its sizes: {', '.join(all_sizes)})")))
    return params


def synchronize(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


# Each provider is timed over at least this many seconds (more rounds for fast steps). On the
# shared 2-vCPU CPU machine the speed drifts for seconds at a time: 30 rounds of a 13 ms loss
# step (0.4 s) gave one provider's median 35% above its interleaved A/B figure
# (bench/interleaved.py); windows of a few seconds average the drift out.
# FASTMARL_BENCH_MIN_SECONDS overrides it: a GPU's timings do not drift so, and
# bench/gpu_session.sh must fit the suites into a few minutes of a lent GPU.
MIN_SECONDS = float(os.environ.get("FASTMARL_BENCH_MIN_SECONDS", 3.0))
MAX_ROUNDS = 2000


def run_pedantic(benchmark, fn, input_sets, device, *, rounds, warmup_rounds=2, min_seconds=MIN_SECONDS):
    """Time ``fn(*inputs)`` with the inputs rotated between rounds and the device synchronised.

    Rotating several input sets keeps a small problem from being timed on a warm cache it
    would not have in training. ``rounds`` is a minimum: fast steps get more rounds, up to
    ``MAX_ROUNDS``, so that the timed window lasts ``min_seconds`` (not in a
    ``--benchmark-disable`` smoke run). Returns the last result and the inputs that produced it.
    """
    if benchmark.extra_info.get("size") == "tiny":
        # The tiny size is a smoke run of the suite and its report (fastmarl bench --sizes tiny,
        # tests/test_readme.py): a few rounds each, and no minute-long compiles.
        if str(benchmark.extra_info.get("provider", "")).endswith("compiled"):
            pytest.skip("compiled providers are skipped at the tiny size (compile time; tests/ covers compilation)")
        min_seconds = 0
    inputs = itertools.cycle(input_sets)
    last = []

    def timed():
        args = next(inputs)
        out = fn(*args)
        synchronize(device)
        last[:] = [out, args]

    synchronize(device)
    if not benchmark.disabled and min_seconds > 0:
        # Warm up here (compiles, caches), then size the rounds on the warm step's time.
        for _ in range(max(warmup_rounds, 1)):
            timed()
        start = time.perf_counter()
        timed()
        step_seconds = time.perf_counter() - start
        rounds = max(rounds, min(MAX_ROUNDS, math.ceil(min_seconds / max(step_seconds, 1e-9))))
        warmup_rounds = 0
    benchmark.pedantic(timed, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
    return tuple(last)


def skip_compiled_in_smoke_run(benchmark, provider: str) -> None:
    """Compiled providers take about a minute each to compile on the CPU machine; a smoke run
    (``--benchmark-disable``, CI) checks the eager providers only. tests/ covers compilation."""
    if provider.endswith("compiled") and benchmark.disabled:
        pytest.skip("compiled provider skipped in a --benchmark-disable smoke run (compile time)")
