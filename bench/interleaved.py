"""Interleaved A/B timing of fastmarl against TorchRL, eager, for cells a noisy machine disputes.

pytest-benchmark times one provider after another. On a shared 2-vCPU VM the machine's speed
drifts over minutes (the same provider's median moved by up to 30% between two runs of
bench_qmix.py), so two providers timed a minute apart can differ by more than fastmarl's gain.
Here the providers alternate round by round on the same inputs, so drift hits both alike:

    python bench/interleaved.py qmix-fwd-bwd:B32-n32 qmix-loss:B65536-n3 ppo-loss:tutorial \
        --rounds 40 --json bench/results/interleaved-cpu-<date>.json

Cases: ``gae`` (TorchRL's loop functional against fastmarl's, at ``BxTxA`` such as
``1024x500x8``), ``qmix-fwd``, ``qmix-fwd-bwd``, ``qmix-loss`` at bench_qmix.py's sizes, ``ppo-math`` and
``ppo-loss`` at bench_ppo.py's, and the whole update step of bench_update.py: ``update-ppo`` at
``tutorial`` (400x3) or ``benchmarl`` (4096x4), ``update-qmix`` at ``B4096-n8`` or ``tutorial``,
with providers TorchRL eager (the tutorial loop), fastmarl eager and fastmarl
``UpdateStep(compile=True)`` (its compile time, the first calls, is printed apart);
``mlp-per-agent`` (per-agent MultiAgentMLP variants), ``adam`` (Adam's step for-loop / foreach /
fused) and ``update-adam`` (the compiled PPO step with a foreach or a fused Adam). Prints min and
median per provider and, for each peer, the median of the per-round ratios (peer time / time of
the case's last provider, fastmarl's, in the same round) with their 10th-90th percentile spread.

The issue-11 figures (UpdateStep(compile=True) against TorchRL eager and fastmarl eager):

    python bench/interleaved.py update-ppo:tutorial update-ppo:benchmarl update-qmix:B4096-n8 \
        --rounds 30 --json bench/results/interleaved-update-cpu-<date>.json

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
import bench_update  # noqa: E402

UPDATE_PROVIDERS = ("torchrl", "fastmarl", "fastmarl_compiled")


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


def qmix_loss_steps(size: str, compiled: bool = False):
    """``QMixerLoss`` forward + backward of each backend (bench_qmix.py's setup); ``compiled``:
    both under ``torch.compile`` as bench_qmix.py compiles them, warmed up before the rounds."""
    B, n, E, S = bench_qmix.SIZES[size]
    steps = {}
    for provider in ("torchrl", "fastmarl"):
        loss, n_actions = bench_qmix._loss(provider + ("_compiled" if compiled else ""), n, E, S, "cpu")
        td = bench_qmix._minibatch(B, n, S, n_actions, "cpu")

        def step(td, loss=loss):
            loss.zero_grad(set_to_none=True)
            out = loss(td)
            out["loss"].backward()
            return out["loss"].detach()
        if compiled:
            step = torch.compile(step)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchRL: no target updater attached (none needed)
                for _ in range(10):
                    step(td)
        steps[provider] = lambda step=step, td=td: step(td)
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


def update_steps(case: str, size: str):
    """The update step of each provider (bench_update.py's setups), compiled providers warmed up:
    ``(steps, compile seconds per provider)``."""
    steps, compile_seconds = {}, {}
    for provider in UPDATE_PROVIDERS:
        if case == "ppo":
            N, A = bench_update.STEP_SIZES[size]
            step, batches = bench_update.ppo_step_case(provider, N, A, "cpu")
            fresh = False
        else:
            N, A = bench_update.QMIX_SIZES[size]
            step, batches = bench_update.qmix_step_case(provider, N, A, "cpu")
            fresh = True  # a new replay sample each call: the loss writes its priority into it
        compile_seconds[provider] = bench_update._timed_warmup(
            step, batches, bench_update.warm_calls(provider), "cpu", fresh=fresh)
        counter = iter(range(1 << 62))

        def run(step=step, batches=batches, fresh=fresh, counter=counter):
            batch = batches[next(counter) % len(batches)]
            return step(batch.clone(False) if fresh else batch)
        steps[provider] = run
    return steps, compile_seconds


def adam_steps(size: str):
    """``Adam.step()`` alone over the tutorial networks' parameters (random gradients): torch's
    CPU default (a loop over tensors), ``foreach`` and ``fused``."""
    N, A = bench_update.STEP_SIZES[size]
    loss = bench_update.ppo_loss("fastmarl", A, "cpu")
    params = [p for p in loss.parameters() if p.requires_grad]
    steps = {}
    for name, flags in (("forloop", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
        copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
        for p in copies:
            p.grad = torch.randn_like(p)
        steps[name] = torch.optim.Adam(copies, bench_update.LR, **flags).step
    return steps


def update_adam_steps(size: str):
    """``UpdateStep(compile=True)`` of the PPO step with a ``foreach`` and a fused Adam."""
    N, A = bench_update.STEP_SIZES[size]
    steps, compile_seconds = {}, {}
    for name, flags in (("foreach", {"foreach": True}), ("fused", {"fused": True})):
        loss = bench_update.ppo_loss("fastmarl", A, "cpu")
        step = bench_update.UpdateStep(loss, torch.optim.Adam(loss.parameters(), bench_update.LR, **flags),
                                       max_grad_norm=bench_update.MAX_GRAD_NORM, compile=True)
        generator = torch.Generator().manual_seed(1)
        batches = [bench_update.ppo_minibatch(N, A, "cpu", generator) for _ in range(4)]
        compile_seconds[name] = bench_update._timed_warmup(step, batches, 2, "cpu")
        counter = iter(range(1 << 62))
        steps[name] = lambda step=step, batches=batches, counter=counter: step(batches[next(counter) % 4])
    return steps, compile_seconds


def mlp_steps(size: str):
    """A per-agent (``share_params=False``) MultiAgentMLP 18 -> 2x256 Tanh -> 4 at ``N x A``
    (``tutorial``: 400x3, ``benchmarl``: 4096x4), forward + backward, decentralised: TorchRL's
    (``to_module`` + ``vmap``), ``torch.func.functional_call`` under ``vmap`` over the stacked
    parameters (no swap), and fastmarl's (``baddbmm`` over the stacked weights)."""
    from torchrl.modules import MultiAgentMLP as TorchRLMultiAgentMLP

    from fastmarl._compat import param_leaves
    from fastmarl.modules import MultiAgentMLP

    N, A = bench_update.STEP_SIZES[size]
    kwargs = dict(centralized=False, share_params=False, depth=2, num_cells=256)
    theirs = TorchRLMultiAgentMLP(bench_update.OBS, 4, A, **kwargs)
    ours = MultiAgentMLP(bench_update.OBS, 4, A, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    keys = ours.__dict__["_fastmarl_plan"][1]
    x = torch.randn(N, A, bench_update.OBS)

    def functional_vmap():
        params = {f"{a}.{b}": leaf for (a, b), leaf in zip(keys, param_leaves(ours.params, keys))}
        call = lambda p, inp: torch.func.functional_call(ours._empty_net, p, (inp,))  # noqa: E731
        return torch.vmap(call, in_dims=(0, -2), out_dims=-2)(params, x)

    def make(fn):
        def step():
            fn().sum().backward()
        return step
    return {"torchrl": make(lambda: theirs(x)), "functional_vmap": make(functional_vmap),
            "fastmarl": make(lambda: ours(x))}


CASES = {
    "gae": gae_steps,
    "mlp-per-agent": mlp_steps,
    "adam": adam_steps,
    "update-adam": update_adam_steps,
    "update-ppo": lambda size: update_steps("ppo", size),
    "update-qmix": lambda size: update_steps("qmix", size),
    "ppo-math": ppo_math_steps,
    "qmix-fwd": lambda size: qmix_mixer_steps(size, backward=False),
    "qmix-fwd-bwd": lambda size: qmix_mixer_steps(size, backward=True),
    "qmix-loss": qmix_loss_steps,
    "qmix-loss-compiled": lambda size: qmix_loss_steps(size, compiled=True),
    "ppo-loss": ppo_loss_steps,
}


def _quantile(values, q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def measure(steps: dict, rounds: int, warmup: int) -> dict:
    """Alternate the providers round by round; ratios are against the last provider."""
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
    subject = list(steps)[-1]
    ratios = {peer: [t / s for t, s in zip(times[peer], times[subject])] for peer in steps if peer != subject}
    row = {
        "subject": subject,
        "min": {k: min(v) for k, v in times.items()},
        "median": {k: statistics.median(v) for k, v in times.items()},
        "median_round_ratio": {peer: statistics.median(r) for peer, r in ratios.items()},
        "ratio_p10_p90": {peer: [_quantile(r, 0.1), _quantile(r, 0.9)] for peer, r in ratios.items()},
        "rounds": rounds,
    }
    if list(steps) == ["torchrl", "fastmarl"]:  # the two-provider cases' historical field
        row["median_round_ratio"] = row["median_round_ratio"]["torchrl"]
    return row


def _cpu_name() -> str:
    from fastmarl.machine import device_name

    return device_name("cpu")


def _format(row: dict) -> str:
    subject = row["subject"]
    ms = " ".join(f"{name} {row['median'][name] * 1e3:.3f}" for name in row["median"])
    lines = [f"{row['case']:<14} {row['size']:<10} medians (ms): {ms}"]
    ratios = row["median_round_ratio"]
    if not isinstance(ratios, dict):
        ratios = {"torchrl": ratios}
    for peer, ratio in ratios.items():
        spread = row.get("ratio_p10_p90", {}).get(peer)
        text = f" (p10-p90 {spread[0]:.2f}-{spread[1]:.2f})" if spread else ""
        lines.append(f"    {subject} vs {peer}: per-round speed-up {ratio:.2f}x{text}")
    if row.get("compile_seconds"):
        lines.append("    first calls (compile): " + ", ".join(
            f"{k} {v:.1f} s" for k, v in row["compile_seconds"].items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cells", nargs="+", help="case:size, e.g. qmix-fwd-bwd:B32-n32")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the results here (atomically)")
    parser.add_argument("--busy", type=int, default=0, metavar="N",
                        help="measure beside a process multiplying matrices on N threads")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (1 keeps OpenMP from spinning against other "
                             "processes on a shared machine; default: torch's)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the cells' case names and exit (tests/test_readme.py)")
    args = parser.parse_args(argv)
    for cell in args.cells:
        case = cell.partition(":")[0]
        if case not in CASES:
            parser.error(f"unknown case {case!r}; known: {sorted(CASES)}")
    if args.dry_run:
        return 0
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    results = []
    with warnings.catch_warnings(), busy_neighbour(args.busy):
        warnings.simplefilter("ignore")  # TorchRL's no-target-updater warning, every call
        for cell in args.cells:
            case, _, size = cell.partition(":")
            torch.manual_seed(0)
            steps = CASES[case](size)
            compile_seconds = None
            if isinstance(steps, tuple):
                steps, compile_seconds = steps
            row = {"case": case, "size": size, "busy_neighbour_threads": args.busy,
                   **measure(steps, args.rounds, args.warmup)}
            if compile_seconds is not None:
                row["compile_seconds"] = compile_seconds
            results.append(row)
            print(_format(row), flush=True)
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
