"""Interleaved A/B timing of fastmarl against TorchRL, eager, for cells a noisy machine disputes.

pytest-benchmark times one provider after another. On a shared 2-vCPU VM the machine's speed
drifts over minutes (the same provider's median moved by up to 30% between two runs of
bench_qmix.py), so two providers timed a minute apart can differ by more than fastmarl's gain.
Here the providers alternate round by round on the same inputs, so drift hits both alike:

    python bench/interleaved.py qmix-fwd-bwd:B32-n32 qmix-loss:B65536-n3 ppo-loss:tutorial \
        --rounds 40 --json bench/results/interleaved-cpu-<date>.json

Cases: ``gae`` (TorchRL's loop functional against fastmarl's, at ``BxTxA`` such as
``1024x500x8``), ``qmix-fwd``, ``qmix-fwd-bwd``, ``qmix-loss`` at bench_qmix.py's sizes, ``ppo-math``
and ``ppo-loss`` at bench_ppo.py's. Prints min and median per provider and the median of the
per-round ratios (TorchRL time / fastmarl time of the same round) with their range.

``--busy N`` runs the cells beside a busy neighbour: another process multiplying matrices on N
threads for the whole measurement, as a second training job on the same cores would (a fast
path that collapses under contention is a bug)::

    python bench/interleaved.py gae:1024x500x8 --busy 2 --rounds 10
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_ppo  # noqa: E402
import bench_qmix  # noqa: E402


def gae_steps(size: str):
    from torchrl.objectives.value.functional import generalized_advantage_estimate as torchrl_gae

    from fastmarl.functional import generalized_advantage_estimate as fastmarl_gae

    B, T, A = (int(x) for x in size.split("x"))
    value, next_value, reward = (torch.randn(B, T, A, 1) for _ in range(3))
    done = torch.rand(B, T, A, 1) < 0.02
    # TorchRL's generalized_advantage_estimate is its loop (the vectorised one is another function).
    args = (0.99, 0.95, value, next_value, reward, done, done)
    return {"torchrl": lambda: torchrl_gae(*args, time_dim=-3),
            "fastmarl": lambda: fastmarl_gae(*args, time_dim=-3)}


@contextlib.contextmanager
def busy_neighbour(threads: int):
    """A second process multiplying 512x512 matrices on ``threads`` threads until the block ends."""
    if threads <= 0:
        yield
        return
    code = (f"import torch; torch.set_num_threads({threads}); a = torch.randn(512, 512)\n"
            "while True: a = torch.tanh(a @ a)")
    neighbour = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(2.0)  # let it start and spin
        yield
    finally:
        neighbour.kill()
        neighbour.wait()


def qmix_mixer_steps(size: str, backward: bool):
    B, n, E, S = bench_qmix.SIZES[size]
    theirs, ours = bench_qmix._mixers(n, E, S, "cpu")
    q, state = torch.randn(B, n, 1), torch.randn(B, S)

    def make(mixer):
        def step():
            if not backward:
                with torch.no_grad():
                    return mixer(q, state)
            mixer.zero_grad(set_to_none=True)
            q_leaf = q.detach().requires_grad_()
            mixer(q_leaf, state).sum().backward()
            return q_leaf.grad
        return step
    return {"torchrl": make(theirs), "fastmarl": make(ours)}


def qmix_loss_steps(size: str):
    B, n, E, S = bench_qmix.SIZES[size]
    steps = {}
    for provider in ("torchrl", "fastmarl"):
        loss, n_actions = bench_qmix._loss(provider, n, E, S, "cpu")
        td = bench_qmix._minibatch(B, n, S, n_actions, "cpu")

        def step(loss=loss, td=td):
            loss.zero_grad(set_to_none=True)
            loss(td)["loss"].backward()
        steps[provider] = step
    return steps


def ppo_loss_steps(size: str):
    N, A = bench_ppo.SIZES[size]
    td = bench_ppo.minibatch(N, A, "cpu")
    steps = {}
    for provider, cls in (("torchrl", bench_ppo.TorchRLMAPPOLoss), ("fastmarl", bench_ppo.MAPPOLoss)):
        policy, critic = bench_ppo.tutorial_networks(A, "cpu")
        loss = cls(policy, critic, clip_epsilon=bench_ppo.CLIP, entropy_coeff=bench_ppo.ENTROPY_COEFF,
                   clip_value=bench_ppo.CLIP_VALUE)
        loss.set_keys(value=("agents", "state_value"), action=("agents", "action"),
                      sample_log_prob=("agents", "sample_log_prob"))

        def step(loss=loss):
            loss.zero_grad(set_to_none=True)
            out = loss(td)
            (out["loss_objective"] + out["loss_critic"] + out["loss_entropy"]).backward()
        steps[provider] = step
    return steps


def ppo_math_steps(size: str):
    N, A = bench_ppo.SIZES[size]
    inputs = bench_ppo.math_inputs(N, A, "cpu")

    def make(fn):
        def step():
            fn(*inputs).backward()
        return step
    return {"torchrl": make(bench_ppo.torchrl_math), "fastmarl": make(bench_ppo.fastmarl_math)}


CASES = {
    "gae": gae_steps,
    "ppo-math": ppo_math_steps,
    "qmix-fwd": lambda size: qmix_mixer_steps(size, backward=False),
    "qmix-fwd-bwd": lambda size: qmix_mixer_steps(size, backward=True),
    "qmix-loss": qmix_loss_steps,
    "ppo-loss": ppo_loss_steps,
}


def measure(steps: dict, rounds: int, warmup: int) -> dict:
    times = {name: [] for name in steps}
    for r in range(warmup + rounds):
        # Alternate which provider goes first so neither always runs on a warmer cache.
        order = list(steps) if r % 2 == 0 else list(reversed(steps))
        for name in order:
            start = time.perf_counter()
            steps[name]()
            elapsed = time.perf_counter() - start
            if r >= warmup:
                times[name].append(elapsed)
    ratios = [t / f for t, f in zip(times["torchrl"], times["fastmarl"])]
    return {
        "min": {k: min(v) for k, v in times.items()},
        "median": {k: statistics.median(v) for k, v in times.items()},
        "median_round_ratio": statistics.median(ratios),
        "round_ratio_range": [min(ratios), max(ratios)],
        "rounds": rounds,
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cells", nargs="+", help="case:size, e.g. qmix-fwd-bwd:B32-n32")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the results here (atomically)")
    parser.add_argument("--busy", type=int, default=0, metavar="N",
                        help="measure beside a process multiplying matrices on N threads")
    args = parser.parse_args(argv)
    results = []
    with warnings.catch_warnings(), busy_neighbour(args.busy):
        warnings.simplefilter("ignore")  # TorchRL's no-target-updater warning, every call
        for cell in args.cells:
            case, _, size = cell.partition(":")
            if case not in CASES:
                parser.error(f"unknown case {case!r}; known: {sorted(CASES)}")
            torch.manual_seed(0)
            row = {"case": case, "size": size, "busy_neighbour_threads": args.busy,
                   **measure(CASES[case](size), args.rounds, args.warmup)}
            results.append(row)
            print(f"{case:<14}{size:<10} torchrl {row['median']['torchrl'] * 1e3:9.3f} ms  "
                  f"fastmarl {row['median']['fastmarl'] * 1e3:9.3f} ms  (medians; min "
                  f"{row['min']['torchrl'] * 1e3:.3f} / {row['min']['fastmarl'] * 1e3:.3f})  "
                  f"per-round speed-up {row['median_round_ratio']:.2f}x "
                  f"({row['round_ratio_range'][0]:.2f}-{row['round_ratio_range'][1]:.2f})", flush=True)
    if args.json:
        payload = {"machine": _cpu_name(), "torch": torch.__version__,
                   "threads": torch.get_num_threads(), "results": results}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=args.json.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=1)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
