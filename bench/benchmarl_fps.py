"""Frames per second of BenchMARL's own algorithm against fastmarl's, alternated in one process.

    python bench/benchmarl_fps.py --algorithm mappo --task balance --rounds 4 --threads 1 \
        --json bench/results/benchmarl-fps-cpu-<date>.json

Each round runs one BenchMARL experiment per provider (BenchMARL's ``MappoConfig`` and
fastmarl's ``FastMappoConfig``; likewise ippo, qmix), the order swapped every round so that a
drifting machine hits both alike. Both use the same seed and BenchMARL's default experiment
config (``base_experiment.yaml``: 6000 frames per iteration from 10 envs, 45 passes of 15
minibatches of 400 for PPO, 1000 steps of 128 for QMIX), with evaluation and loggers off, for
``--iters`` iterations. Times are BenchMARL's own per-iteration timers (``timers/collection_time``,
``timers/training_time``: the latter is GAE plus the optimiser loop, ``timers/iteration_time``).
Prints per provider the median frames per second (iteration and training) and the median and
range of the per-round ratios fastmarl / BenchMARL (> 1: fastmarl faster).

``--unit update`` alternates finer, on one collected batch (the same for both: same seed): per
round and provider, BenchMARL's ``process_batch`` (GAE for PPO) and ``--steps`` calls of
BenchMARL's ``Experiment._optimizer_loop`` (sample a minibatch, loss, backward, clip, Adam), so
that only the phases that differ are timed:

    python bench/benchmarl_fps.py --unit update --algorithm mappo --rounds 30 --steps 15 --threads 1

Needs BenchMARL (see the README's BenchMARL section).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings

import torch


def _experiment(provider: str, algorithm: str, task: str, iters: int, frames: int | None):
    from benchmarl.algorithms import IppoConfig, MappoConfig, QmixConfig
    from benchmarl.environments import VmasTask
    from benchmarl.experiment import Experiment, ExperimentConfig
    from benchmarl.models.mlp import MlpConfig

    from fastmarl.integrations import benchmarl as fb

    configs = {
        "benchmarl": {"mappo": MappoConfig, "ippo": IppoConfig, "qmix": QmixConfig},
        "fastmarl": {"mappo": fb.FastMappoConfig, "ippo": fb.FastIppoConfig, "qmix": fb.FastQmixConfig},
    }
    config = ExperimentConfig.get_from_yaml()
    config.max_n_iters, config.max_n_frames = iters, None
    if frames is not None:
        config.on_policy_collected_frames_per_batch = config.off_policy_collected_frames_per_batch = frames
    config.evaluation, config.render, config.loggers, config.create_json = False, False, [], False
    config.save_folder = tempfile.mkdtemp(prefix="benchmarl-fps-")
    experiment = Experiment(
        task=getattr(VmasTask, task.upper()).get_from_yaml(),
        algorithm_config=configs[provider][algorithm].get_from_yaml(),
        model_config=MlpConfig.get_from_yaml(),
        seed=0,
        config=config,
    )
    timers = []
    log = experiment.logger.log

    def keep_timers(values, step=None):
        if "timers/iteration_time" in values:
            timers.append({k.split("/")[1]: v for k, v in values.items()})
        log(values, step=step)

    experiment.logger.log = keep_timers  # BenchMARL computes its timers whether or not it logs
    return experiment, timers


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algorithm", choices=["mappo", "ippo", "qmix"], default="mappo")
    parser.add_argument("--task", default="balance", help="VMAS task (default balance)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--iters", type=int, default=1, help="iterations per run (default 1)")
    parser.add_argument("--frames", type=int, default=None, help="frames per iteration (default BenchMARL's 6000)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    parser.add_argument("--unit", choices=["experiment", "update"], default="experiment",
                        help="what alternates: whole experiments (default) or GAE + update steps")
    parser.add_argument("--steps", type=int, default=15, help="--unit update: minibatch updates per round")
    parser.add_argument("--json", default=None, help="write the per-round timers here")
    args = parser.parse_args(argv)
    for name in ("rounds", "iters", "frames", "threads", "steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be a positive integer, got {value}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    try:
        import fastmarl.integrations.benchmarl  # noqa: F401
    except ImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    providers = ("benchmarl", "fastmarl")
    if args.unit == "update":
        return _update_rounds(args, providers)
    # Warm-up: one short run each (imports, allocator, first-call costs), not counted.
    for provider in providers:
        experiment, _ = _experiment(provider, args.algorithm, args.task, 1, 600)
        experiment.run()
    rounds = []
    for r in range(args.rounds):
        row = {}
        for provider in providers if r % 2 == 0 else providers[::-1]:
            experiment, timers = _experiment(provider, args.algorithm, args.task, args.iters, args.frames)
            frames = experiment.config.collected_frames_per_batch(experiment.on_policy)
            experiment.run()
            row[provider] = {
                "frames": frames * len(timers),
                **{k: sum(t[k] for t in timers) for k in ("collection_time", "training_time", "iteration_time")},
            }
        rounds.append(row)
        b, f = row["benchmarl"], row["fastmarl"]
        print(f"round {r}: iteration {b['iteration_time']:.2f} s BenchMARL, {f['iteration_time']:.2f} s fastmarl; "
              f"training {b['training_time']:.2f} / {f['training_time']:.2f} s", flush=True)

    print(f"\n{args.algorithm} on vmas/{args.task}, {args.rounds} rounds × {args.iters} iteration(s), "
          f"torch threads {torch.get_num_threads()}")
    summary = {}
    for provider in providers:
        fps = [r[provider]["frames"] / r[provider]["iteration_time"] for r in rounds]
        train_fps = [r[provider]["frames"] / r[provider]["training_time"] for r in rounds]
        summary[provider] = {"fps_median": statistics.median(fps), "training_fps_median": statistics.median(train_fps)}
        print(f"  {provider:9s}: {statistics.median(fps):8.0f} frames/s (iteration), "
              f"{statistics.median(train_fps):8.0f} frames/s (training phase)")
    for phase in ("iteration_time", "training_time", "collection_time"):
        ratios = [r["benchmarl"][phase] / r["fastmarl"][phase] for r in rounds]
        summary[f"speedup_{phase}"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
        print(f"  fastmarl / BenchMARL speed, {phase.replace('_time', '')}: median {statistics.median(ratios):.3f}× "
              f"(rounds {min(ratios):.3f}–{max(ratios):.3f})")
    if args.json:
        import benchmarl
        import torchrl

        with open(args.json, "w") as f:
            json.dump({
                "args": vars(args), "rounds": rounds, "summary": summary,
                "machine": {"platform": platform.platform(), "processor": platform.processor(),
                            "torch": torch.__version__, "torchrl": torchrl.__version__,
                            "benchmarl": benchmarl.__version__, "threads": torch.get_num_threads(),
                            "time": time.strftime("%Y-%m-%d %H:%M")},
            }, f, indent=1)
    return 0


def _update_rounds(args, providers) -> int:
    group = "agents"
    setups = {}
    for provider in providers:
        experiment, _ = _experiment(provider, args.algorithm, args.task, 1, args.frames)
        batch = next(iter(experiment.collector))  # same seed: the same batch for both providers
        # As Experiment._collection_loop prepares a group's batch (BenchMARL 1.5.2).
        setups[provider] = (experiment, batch.exclude(*experiment._get_excluded_keys(group)))
    rounds = []
    for r in range(args.rounds + 1):  # round 0 warms up, not counted
        row = {}
        for provider in providers if r % 2 == 0 else providers[::-1]:
            experiment, batch = setups[provider]
            start = time.perf_counter()
            processed = experiment.algorithm.process_batch(group, batch.clone())
            if not experiment.algorithm.has_rnn:
                processed = processed.reshape(-1)
            mid = time.perf_counter()
            experiment.replay_buffers[group].extend(processed)
            for _ in range(args.steps):
                experiment._optimizer_loop(group)
            row[provider] = {"process_batch_time": mid - start, "update_time": time.perf_counter() - mid}
        if r:
            rounds.append(row)
    frames = setups["benchmarl"][0].config.collected_frames_per_batch(setups["benchmarl"][0].on_policy)
    print(f"{args.algorithm} on vmas/{args.task}: {frames} frames per batch, {args.steps} updates per round, "
          f"{args.rounds} rounds, torch threads {torch.get_num_threads()}")
    summary = {}
    for phase in ("process_batch_time", "update_time"):
        for provider in providers:
            median = statistics.median(r[provider][phase] for r in rounds)
            summary[f"{provider}_{phase}_median"] = median
            per = f"{1e3 * median / args.steps:.2f} ms per update" if phase == "update_time" else f"{1e3 * median:.2f} ms"
            print(f"  {phase.replace('_time', ''):13s} {provider:9s}: {per}")
        ratios = [r["benchmarl"][phase] / r["fastmarl"][phase] for r in rounds]
        summary[f"speedup_{phase}"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
        print(f"  {phase.replace('_time', ''):13s} fastmarl / BenchMARL speed: median {statistics.median(ratios):.3f}× "
              f"(rounds {min(ratios):.3f}–{max(ratios):.3f})")
    for experiment, _ in setups.values():
        experiment.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rounds": rounds, "summary": summary,
                       "machine": {"platform": platform.platform(), "torch": torch.__version__,
                                   "threads": torch.get_num_threads(), "time": time.strftime("%Y-%m-%d %H:%M")}},
                      f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
