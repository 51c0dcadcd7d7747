"""Runs a configuration: progress bar, run folder, checkpoint and ``--resume``, comparison."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from fastmarl.training.config import TrainConfig, validate
from fastmarl.training.run import (
    PhaseTimer,
    RunFolder,
    atomic_write_text,
    load_checkpoint,
    phase_table,
    plot_rewards,
    save_checkpoint,
)


def _trainer_class(algo: str):
    if algo == "qmix":
        from fastmarl.training.qmix import QMIXTrainer

        return QMIXTrainer
    from fastmarl.training.ppo import PPOTrainer

    return PPOTrainer


def default_run_dir(config: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.algo}-{config.scenario}-{config.backend}-{stamp}"


def train(config: TrainConfig | None = None, *, out: str | Path | None = None, resume: str | Path | None = None,
          iters: int | None = None, progress: bool = True) -> dict:
    """Train, writing the run folder after every iteration; returns the metrics and timings.

    ``resume`` is a run folder (or its ``checkpoint.pt``): the configuration, weights, optimiser
    state, RNG state and metrics come back from it and training continues up to ``iters``
    (default: the saved configuration's). The environments restart from fresh resets.
    """
    state = None
    if resume is not None:
        resume = Path(resume)
        ckpt_path = resume if resume.is_file() else resume / "checkpoint.pt"
        if not ckpt_path.exists():
            raise FileNotFoundError(f"--resume {resume}: no checkpoint.pt there")
        state = load_checkpoint(ckpt_path)
        config = TrainConfig.from_dict(state["config"])
        out = out or ckpt_path.parent
    config = config or TrainConfig()
    if iters is not None:
        config = dataclasses.replace(config, iters=iters)
    validate(config)
    folder = RunFolder(out or default_run_dir(config))
    timer = PhaseTimer(config.device)
    trainer = _trainer_class(config.algo)(config, timer)
    rows: list[dict] = []
    start = 0
    if state is not None:
        trainer.load_state_dict(state["trainer"])
        rows = list(state["metrics"])
        timer.history = [dict(p) for p in state["phases"]]
        torch.set_rng_state(state["rng"])
        start = int(state["iteration"])
    folder.write_config(config.to_json())
    if start >= config.iters:
        raise ValueError(f"the run in {folder.path} already has {start} iterations; pass --iters > {start}")

    from tqdm import tqdm

    bar = tqdm(total=config.iters, initial=start, disable=not progress, dynamic_ncols=True)
    trainer.start(config.iters - start)
    try:
        for iteration in range(start, config.iters):
            row = {"iteration": iteration + 1, **trainer.step()}
            row.update({f"time_{phase}": seconds for phase, seconds in timer.end_iteration().items()})
            rows.append(row)
            folder.write_metrics(rows)
            save_checkpoint(folder.checkpoint, {
                "config": dataclasses.asdict(config), "iteration": iteration + 1, "trainer": trainer.state_dict(),
                "metrics": rows, "phases": timer.history, "rng": torch.get_rng_state(),
            })
            bar.set_description(f"episode_reward_mean = {row['episode_reward_mean']:.3f}, fps = {row['fps']:.0f}",
                                refresh=False)
            bar.update()
    finally:
        bar.close()
        trainer.close()
    rewards = [row["episode_reward_mean"] for row in rows]
    folder.write_reward_plot({config.backend: rewards}, f"{config.algo.upper()} on VMAS {config.scenario}")
    totals = timer.totals()
    folder.write_phases(totals, len(rows))
    return {"run_dir": str(folder.path), "config": config, "metrics": rows, "phase_seconds": totals}


def compare(config: TrainConfig | None = None, *, out: str | Path | None = None, progress: bool = True) -> dict:
    """Run both backends on the same configuration and seed; write and return them side by side."""
    config = config or TrainConfig()
    validate(config)
    root = Path(out) if out else Path("runs") / f"compare-{config.algo}-{config.scenario}-{time.strftime('%Y%m%d-%H%M%S')}"
    results = {}
    for backend in ("torchrl", "fastmarl"):
        results[backend] = train(dataclasses.replace(config, backend=backend), out=root / backend, progress=progress)
    curves = {b: [row["episode_reward_mean"] for row in r["metrics"]] for b, r in results.items()}
    plot_rewards(root / "reward.png", curves, f"{config.algo.upper()} on VMAS {config.scenario}: TorchRL vs fastmarl")
    table = comparison_table(results)
    atomic_write_text(root / "comparison.txt", table + "\n")
    atomic_write_text(root / "comparison.json", json.dumps({
        backend: {"rewards": curves[backend], "phase_seconds": r["phase_seconds"], "iterations": len(r["metrics"])}
        for backend, r in results.items()}, indent=2) + "\n")
    return {"run_dir": str(root), "results": results, "table": table}


def comparison_table(results: dict) -> str:
    """Rewards per iteration and seconds per iteration per phase, one column per backend."""
    backends = list(results)
    iters = max(len(r["metrics"]) for r in results.values())
    lines = ["mean episode reward", f"{'iteration':<24}" + "".join(f"{b:>12}" for b in backends)]
    for i in range(iters):
        cells = []
        for b in backends:
            rows = results[b]["metrics"]
            cells.append(f"{rows[i]['episode_reward_mean']:>12.3f}" if i < len(rows) else f"{'':>12}")
        lines.append(f"{i + 1:<24}" + "".join(cells))
    lines += ["", "seconds per iteration", f"{'phase':<24}" + "".join(f"{b:>12}" for b in backends)]
    phases = list(dict.fromkeys(p for r in results.values() for p in r["phase_seconds"]))
    totals = {b: 0.0 for b in backends}
    for phase in phases:
        cells = []
        for b in backends:
            seconds = results[b]["phase_seconds"].get(phase, 0.0) / max(len(results[b]["metrics"]), 1)
            totals[b] += seconds
            cells.append(f"{seconds:>12.3f}")
        lines.append(f"{phase:<24}" + "".join(cells))
    lines.append(f"{'total':<24}" + "".join(f"{totals[b]:>12.3f}" for b in backends))
    if len(backends) == 2 and totals[backends[1]] > 0:
        lines.append(f"{'speed-up':<24}{'':>12}{totals[backends[0]] / totals[backends[1]]:>11.2f}x")
    return "\n".join(lines)


__all__ = ["train", "compare", "comparison_table", "default_run_dir", "phase_table"]
