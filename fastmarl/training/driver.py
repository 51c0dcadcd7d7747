"""Runs a configuration: progress bar, run folder, checkpoint and exact ``--resume``, comparison.

A run's randomness is a stream of its own (torch's generators and VMAS's shared state, see
``fastmarl.training.rng``: saved after every iteration and put back before the next), and every
iteration starts from fresh environment resets drawn from it. So a checkpoint (weights, optimiser, sampler or
replay buffer, exploration, RNG state, metrics) is everything that carries from one iteration
to the next: N iterations in one go and N/2 plus a resume to N give the same metrics and
parameters, and ``compare`` can alternate two runs iteration by iteration in one process.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
import zipfile
from pathlib import Path

import torch

from fastmarl.training import rng as run_rng
from fastmarl.training.config import RunError, TrainConfig, validate
from fastmarl.training.run import (
    CHECKPOINT,
    PhaseTimer,
    RunFolder,
    atomic_write_text,
    load_checkpoint,
    phase_table,
    plot_rewards,
    save_checkpoint,
)

# What a checkpoint holds (a dict, read with weights_only=True).
CHECKPOINT_KEYS = ("config", "iteration", "trainer", "metrics", "phases", "rng")
TIMING_KEYS = ("seconds", "fps")


def _trainer_class(algo: str):
    if algo == "qmix":
        from fastmarl.training.qmix import QMIXTrainer

        return QMIXTrainer
    from fastmarl.training.ppo import PPOTrainer

    return PPOTrainer


def default_run_dir(config: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.algo}-{config.scenario}-{config.backend}-{stamp}"


def _one_line(err: BaseException, limit: int = 240) -> str:
    """An exception as one short line (load_state_dict errors span lines and repr TensorDicts)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = " ".join(lines[:2]) or type(err).__name__
    text = f"{type(err).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _read_checkpoint(resume: str | Path) -> tuple[Path, dict, TrainConfig]:
    """The checkpoint of a run folder (or file), checked; ``RunError`` when it cannot resume."""
    resume = Path(resume)
    where = f"--resume {resume}"
    if resume.is_dir():
        path = resume / CHECKPOINT
        if not path.is_file():
            raise RunError(f"{where}: no {CHECKPOINT} in that folder")
    elif resume.is_file():
        path = resume
    else:
        raise RunError(f"{where}: no such run folder")
    if path.stat().st_size == 0:
        raise RunError(f"{where}: {path} is empty (0 bytes)")
    if not zipfile.is_zipfile(path):
        raise RunError(f"{where}: {path} is not a checkpoint written by fastmarl train (not a torch.save archive)")
    try:
        state = load_checkpoint(path)
    except Exception as err:  # EOFError, UnpicklingError, RuntimeError from zip reading, ...
        raise RunError(f"{where}: {path} is not a readable fastmarl checkpoint ({_one_line(err)})") from None
    if not isinstance(state, dict):
        raise RunError(f"{where}: {path} holds a {type(state).__name__}, not a fastmarl checkpoint")
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    if missing:
        raise RunError(f"{where}: {path} lacks {', '.join(map(repr, missing))} (not a fastmarl checkpoint?)")
    try:
        config = TrainConfig.from_dict(state["config"])
        validate(config)
    except (TypeError, ValueError) as err:
        raise RunError(f"{where}: the configuration saved in {path} is invalid: {err}") from None
    iteration, metrics = state["iteration"], state["metrics"]
    if not isinstance(iteration, int) or iteration < 1 or not isinstance(metrics, list) or len(metrics) != iteration:
        raise RunError(f"{where}: {path} is inconsistent (iteration {iteration!r}, "
                       f"{len(metrics) if isinstance(metrics, list) else '?'} metric rows)")
    rng = state["rng"]
    if isinstance(rng, torch.Tensor):  # written by fastmarl 0.1.0: torch's CPU state only
        state["rng"] = rng = {"cpu": rng}
    if not run_rng.check(rng):
        raise RunError(f"{where}: {path} has no usable RNG state")
    return path, state, config


def _check_module_shapes(trainer, saved) -> None:
    """Name the first network entry whose shape differs between the checkpoint and the networks
    the configuration builds (``load_state_dict`` would report it inside a TensorDict repr)."""
    if not isinstance(saved, dict):
        raise TypeError(f"the trainer state is a {type(saved).__name__}, not a dict")
    for name, part in trainer._checkpointed().items():
        if not isinstance(part, torch.nn.Module):
            continue
        if name not in saved:
            raise KeyError(f"no state for {name!r}")
        theirs = saved[name]
        for key, tensor in part.state_dict().items():
            if key not in theirs:
                raise KeyError(f"{name}.{key} is missing")
            other = theirs[key]
            if isinstance(tensor, torch.Tensor) and isinstance(other, torch.Tensor) and other.shape != tensor.shape:
                raise RuntimeError(f"size mismatch for {name}.{key}: {list(other.shape)} in the checkpoint, "
                                   f"{list(tensor.shape)} in the networks built")


class Run:
    """One training run and its folder. Nothing is written until ``begin()``.

    ``Run.open(...)`` checks the options (and the checkpoint, when resuming) and builds the
    trainer, raising ``RunError``; ``begin()`` opens the folder and starts collection;
    ``step()`` runs one iteration and writes metrics and checkpoint; ``finish()`` writes the
    reward curve and phase table.
    """

    def __init__(self, config: TrainConfig, path: Path, state: dict | None = None, where: str = ""):
        self.config = config
        self.path = Path(path)
        self.timer = PhaseTimer(config.device)
        self.trainer = _trainer_class(config.algo)(config, self.timer)
        self.rows: list[dict] = []
        self.start_iteration = 0
        if state is not None:
            try:
                _check_module_shapes(self.trainer, state["trainer"])
                self.trainer.load_state_dict(state["trainer"])
            except Exception as err:
                self.trainer.close()
                raise RunError(f"{where}: the checkpoint does not fit the networks of its configuration "
                               f"({_one_line(err)})") from None
            self.rows = [dict(row) for row in state["metrics"]]
            self.timer.history = [dict(p) for p in state["phases"]]
            self.start_iteration = int(state["iteration"])
            self.rng = state["rng"]
        else:
            # The trainer seeded the generator, then built the environments and the networks.
            self.rng = run_rng.capture(config.device)
        self.folder: RunFolder | None = None

    @classmethod
    def open(cls, config: TrainConfig | None = None, *, out: str | Path | None = None,
             resume: str | Path | None = None, iters: int | None = None) -> Run:
        state, where = None, ""
        if resume is not None:
            where = f"--resume {resume}"
            path, state, config = _read_checkpoint(resume)
            done = int(state["iteration"])
            if iters is not None and iters <= done:
                raise RunError(f"--resume-iters {iters}: the run in {path.parent} already has {done} iterations; "
                               f"pass --resume-iters N with N > {done}")
            if iters is None and done >= config.iters:
                raise RunError(f"{where}: the run is complete ({done} of {config.iters} iterations); "
                               f"pass --resume-iters N with N > {done} to continue it")
            out = out or path.parent
        config = config or TrainConfig()
        if iters is not None:
            config = dataclasses.replace(config, iters=iters)
        validate(config)
        return cls(config, Path(out) if out else default_run_dir(config), state, where)

    @property
    def done(self) -> bool:
        return len(self.rows) >= self.config.iters

    def begin(self) -> None:
        self.folder = RunFolder(self.path)
        self.folder.write_config(self.config.to_json())
        self.trainer.start(self.config.iters - len(self.rows))

    def step(self) -> dict:
        run_rng.restore(self.rng, self.config.device)
        row = {"iteration": len(self.rows) + 1, **self.trainer.step()}
        self.rng = run_rng.capture(self.config.device)
        row.update({f"time_{phase}": seconds for phase, seconds in self.timer.end_iteration().items()})
        self.rows.append(row)
        self.folder.write_metrics(self.rows)
        save_checkpoint(self.folder.checkpoint, {
            "config": dataclasses.asdict(self.config), "iteration": len(self.rows),
            "trainer": self.trainer.state_dict(), "metrics": self.rows, "phases": self.timer.history,
            "rng": self.rng,
        })
        return row

    def close(self) -> None:
        self.trainer.close()

    def finish(self) -> dict:
        rewards = [row["episode_reward_mean"] for row in self.rows]
        self.folder.write_reward_plot({self.config.backend: rewards},
                                      f"{self.config.algo.upper()} on VMAS {self.config.scenario}")
        totals = self.timer.totals()
        self.folder.write_phases(totals, len(self.rows))
        return {"run_dir": str(self.path), "config": self.config, "metrics": self.rows, "phase_seconds": totals}


def train(config: TrainConfig | None = None, *, out: str | Path | None = None, resume: str | Path | None = None,
          iters: int | None = None, progress: bool = True) -> dict:
    """Train, writing the run folder after every iteration; returns the metrics and timings.

    ``resume`` is a run folder (or its ``checkpoint.pt``): the configuration, weights, optimiser
    state, replay buffer or sampler state, RNG state and metrics come back from it and training
    continues up to ``iters`` (default: the saved configuration's). Raises ``RunError`` before
    writing anything when the options or the checkpoint cannot work.
    """
    run = Run.open(config, out=out, resume=resume, iters=iters)
    from tqdm import tqdm

    try:
        run.begin()
        bar = tqdm(total=run.config.iters, initial=len(run.rows), disable=not progress, dynamic_ncols=True)
        try:
            while not run.done:
                row = run.step()
                bar.set_description(f"episode_reward_mean = {row['episode_reward_mean']:.3f}, fps = {row['fps']:.0f}",
                                    refresh=False)
                bar.update()
        finally:
            bar.close()
    finally:
        run.close()
    return run.finish()


def compare(config: TrainConfig | None = None, *, out: str | Path | None = None, progress: bool = True) -> dict:
    """Both backends on the same configuration and seed, alternating iteration by iteration.

    The two runs live in one process and take turns (TorchRL first on odd iterations, fastmarl
    first on even ones), each with its own RNG stream, so they see the same data and a change in
    the machine's load hits both: the speed-up is the median of the per-iteration ratios, with
    their spread. Writes ``<out>/{torchrl,fastmarl}/`` (run folders), ``reward.png``,
    ``comparison.txt`` and ``comparison.json``.
    """
    config = config or TrainConfig()
    validate(config)
    root = Path(out) if out else Path("runs") / f"compare-{config.algo}-{config.scenario}-{time.strftime('%Y%m%d-%H%M%S')}"
    backends = ("torchrl", "fastmarl")
    runs = {}
    try:
        for backend in backends:
            runs[backend] = Run.open(dataclasses.replace(config, backend=backend), out=root / backend)
        for run in runs.values():
            run.begin()
        from tqdm import tqdm

        with tqdm(total=config.iters, disable=not progress, dynamic_ncols=True) as bar:
            for i in range(config.iters):
                for backend in backends if i % 2 == 0 else backends[::-1]:
                    runs[backend].step()
                a, b = (runs[k].rows[-1] for k in backends)
                bar.set_description(f"reward torchrl {a['episode_reward_mean']:.3f} fastmarl "
                                    f"{b['episode_reward_mean']:.3f}, speed-up {a['seconds'] / b['seconds']:.2f}x",
                                    refresh=False)
                bar.update()
    finally:
        for run in runs.values():
            run.close()
    results = {backend: run.finish() for backend, run in runs.items()}
    curves = {b: [row["episode_reward_mean"] for row in r["metrics"]] for b, r in results.items()}
    plot_rewards(root / "reward.png", curves, f"{config.algo.upper()} on VMAS {config.scenario}: TorchRL vs fastmarl")
    ratios = speedup_ratios(results)
    table = comparison_table(results)
    atomic_write_text(root / "comparison.txt", table + "\n")
    atomic_write_text(root / "comparison.json", json.dumps({
        "config": dataclasses.asdict(config),
        "device_name": _device_name(config.device), "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "speedup": ratios,
        **{backend: {"rewards": curves[backend], "phase_seconds": r["phase_seconds"], "iterations": len(r["metrics"]),
                     "seconds": [row["seconds"] for row in r["metrics"]]}
           for backend, r in results.items()},
    }, indent=2) + "\n")
    return {"run_dir": str(root), "results": results, "table": table, "speedup": ratios}


def _device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _spread(values: list[float]) -> dict:
    ordered = sorted(values)
    if len(ordered) >= 4:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1, q3 = ordered[0], ordered[-1]
    return {"median": statistics.median(ordered), "q1": q1, "q3": q3, "min": ordered[0], "max": ordered[-1],
            "n": len(ordered)}


def speedup_ratios(results: dict) -> dict:
    """Per-iteration TorchRL / fastmarl time ratios (the two ran in turn): the whole iteration,
    and the update alone (every phase but collection, which runs the same code for both)."""
    a, b = results["torchrl"]["metrics"], results["fastmarl"]["metrics"]

    def update_seconds(row):
        return sum(v for k, v in row.items() if k.startswith("time_") and k != "time_collection")

    iteration = [x["seconds"] / y["seconds"] for x, y in zip(a, b)]
    update = [update_seconds(x) / update_seconds(y) for x, y in zip(a, b) if update_seconds(y) > 0]
    reward_diff = max((abs(x["episode_reward_mean"] - y["episode_reward_mean"]) for x, y in zip(a, b)), default=0.0)
    return {"iteration": _spread(iteration), "update": _spread(update) if update else None,
            "max_reward_difference": reward_diff}


def _describe(spread: dict) -> str:
    return (f"median {spread['median']:.2f}x (interquartile {spread['q1']:.2f}-{spread['q3']:.2f}x, "
            f"range {spread['min']:.2f}-{spread['max']:.2f}x, {spread['n']} iterations)")


def comparison_table(results: dict) -> str:
    """Rewards per iteration and seconds per iteration per phase, one column per backend, then
    the per-iteration speed-ups (median and spread)."""
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
    if set(backends) == {"torchrl", "fastmarl"}:
        ratios = speedup_ratios(results)
        lines += ["", "speed-up of fastmarl, TorchRL time / fastmarl time per iteration (the backends alternate):",
                  f"  whole iteration  {_describe(ratios['iteration'])}"]
        if ratios["update"]:
            lines.append(f"  update phases    {_describe(ratios['update'])}")
        lines.append(f"  largest difference in mean episode reward between the backends: "
                     f"{ratios['max_reward_difference']:.3g}")
    return "\n".join(lines)


__all__ = ["Run", "train", "compare", "comparison_table", "default_run_dir", "phase_table", "speedup_ratios"]
