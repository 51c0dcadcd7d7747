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
import threading
import time
import zipfile
from contextlib import contextmanager
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


def one_line(err: BaseException, limit: int = 240) -> str:
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
        raise RunError(f"{where}: {path} is not a readable fastmarl checkpoint ({one_line(err)})") from None
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

    def __init__(self, config: TrainConfig, path: Path, state: dict | None = None, where: str = "",
                 timer: PhaseTimer | None = None, dist=None):
        self.config = config
        self.path = Path(path)
        self.timer = timer or PhaseTimer(config.device)
        # dist: a fastmarl.training.distributed.DistContext under torchrun (rank 0 writes the folder).
        self.dist = dist
        self.is_main = dist is None or dist.is_main
        self.trainer = _trainer_class(config.algo)(config, self.timer, dist=dist)
        self.rows: list[dict] = []
        self.start_iteration = 0
        if state is not None:
            try:
                _check_module_shapes(self.trainer, state["trainer"])
                self.trainer.load_state_dict(state["trainer"])
            except Exception as err:
                self.trainer.close()
                raise RunError(f"{where}: the checkpoint does not fit the networks of its configuration "
                               f"({one_line(err)})") from None
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
             resume: str | Path | None = None, iters: int | None = None, timer: PhaseTimer | None = None,
             dist=None) -> Run:
        state, where = None, ""
        if resume is not None:
            where = f"--resume {resume}"
            path, state, config = open_checkpoint(resume, iters, 1 if dist is None else dist.world_size)
            state = _rank_state(state, dist, where)
            out = out or path.parent
        config = config or TrainConfig()
        if iters is not None:
            config = dataclasses.replace(config, iters=iters)
        validate(config)
        return cls(config, Path(out) if out else default_run_dir(config), state, where, timer, dist)

    @property
    def done(self) -> bool:
        return len(self.rows) >= self.config.iters

    def begin(self) -> None:
        if self.is_main:
            self.folder = RunFolder(self.path)
            self.folder.write_config(self.config.to_json())
        self.trainer.start(self.config.iters - len(self.rows))

    def step(self) -> dict:
        run_rng.restore(self.rng, self.config.device)
        row = {"iteration": len(self.rows) + 1, **self.trainer.step()}
        self.rng = run_rng.capture(self.config.device)
        waited = self.timer.take_waited() if isinstance(self.timer, _TurnTimer) else 0.0
        if waited:  # `compare`: the other run's turns are not this run's time
            row["seconds"] -= waited
            row["fps"] = row["frames"] / row["seconds"]
        row.update({f"time_{phase}": seconds for phase, seconds in self.timer.end_iteration().items()})
        self.rows.append(row)
        ranks = None
        if self.dist is not None:
            # Every rank's own random state and sampler / replay buffer, to rank 0 (which keeps its
            # own at the top level): the networks and the optimizer are the same on every rank.
            own = None if self.is_main else {"rng": self.rng, "trainer": self.trainer.rank_state_dict()}
            ranks = self.dist.gather_to_main(own)
        if not self.is_main:
            return row
        self.folder.write_metrics(self.rows)
        state = {
            "config": dataclasses.asdict(self.config), "iteration": len(self.rows),
            "trainer": self.trainer.state_dict(), "metrics": self.rows, "phases": self.timer.history,
            "rng": self.rng,
        }
        if self.dist is not None:
            state["world_size"] = self.dist.world_size
            state["rank_states"] = {rank: ranks[rank] for rank in range(1, self.dist.world_size)}
        save_checkpoint(self.folder.checkpoint, state)
        return row

    def close(self) -> None:
        self.trainer.close()

    def finish(self) -> dict:
        totals = self.timer.totals()
        if self.is_main:
            rewards = [row["episode_reward_mean"] for row in self.rows]
            self.folder.write_reward_plot({self.config.backend: rewards},
                                          f"{self.config.algo.upper()} on VMAS {self.config.scenario}")
            self.folder.write_phases(totals, len(self.rows))
        return {"run_dir": str(self.path), "config": self.config, "metrics": self.rows, "phase_seconds": totals}


def open_checkpoint(resume: str | Path, iters: int | None = None, world_size: int = 1) -> tuple[Path, dict, TrainConfig]:
    """``(path, state, config)`` of the checkpoint ``resume`` if a run on ``world_size`` ranks can
    continue it to ``iters`` iterations (default: its configuration's); ``RunError`` otherwise."""
    where = f"--resume {resume}"
    path, state, config = _read_checkpoint(resume)
    done = int(state["iteration"])
    if iters is not None and iters <= done:
        raise RunError(f"--resume-iters {iters}: the run in {path.parent} already has {done} iterations; "
                       f"pass --resume-iters N with N > {done}")
    if iters is None and done >= config.iters:
        raise RunError(f"{where}: the run is complete ({done} of {config.iters} iterations); "
                       f"pass --resume-iters N with N > {done} to continue it")
    saved = state.get("world_size", 1)
    if saved != world_size:
        how = (f"torchrun --nproc-per-node {saved} -m fastmarl train {where} (or fastmarl train --nproc {saved} "
               f"{where})" if saved > 1 else "in one process, without torchrun")
        raise RunError(f"{where}: the run was trained on {saved} rank(s), not {world_size}: each rank's "
                       f"random state and samples are in the checkpoint, so resume it on as many: {how}")
    return path, state, config


def _rank_state(state: dict, dist, where: str) -> dict:
    """The checkpoint as this rank resumes it: its own random state and sampler / replay buffer
    (``rank_states``) in place of rank 0's."""
    if dist is None or dist.rank == 0:
        return state
    own = state.get("rank_states", {}).get(dist.rank) if isinstance(state.get("rank_states"), dict) else None
    if not isinstance(own, dict) or not run_rng.check(own.get("rng")) or not isinstance(own.get("trainer"), dict):
        raise RunError(f"{where}: the checkpoint lacks rank {dist.rank}'s state (not written by a distributed run?)")
    return {**state, "rng": own["rng"], "trainer": {**state["trainer"], **own["trainer"]}}


def run_loop(run: Run, progress: bool = True) -> dict:
    """Begin ``run``, step it to its last iteration with a progress bar, close and finish it."""
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


def train(config: TrainConfig | None = None, *, out: str | Path | None = None, resume: str | Path | None = None,
          iters: int | None = None, progress: bool = True) -> dict:
    """Train, writing the run folder after every iteration; returns the metrics and timings.

    ``resume`` is a run folder (or its ``checkpoint.pt``): the configuration, weights, optimiser
    state, replay buffer or sampler state, RNG state and metrics come back from it and training
    continues up to ``iters`` (default: the saved configuration's). Raises ``RunError`` before
    writing anything when the options or the checkpoint cannot work. One process; under
    ``torchrun``, :func:`fastmarl.training.distributed.train_rank` runs each rank.
    """
    return run_loop(Run.open(config, out=out, resume=resume, iters=iters), progress)


# The phase that ends a minibatch step in both trainers: `compare` hands over after it.
HANDOFF_PHASES = ("optimizer",)


class _Aborted(Exception):
    """The other run of a comparison failed: stop taking turns."""


class _Turns:
    """Strict alternation of two runs, each in its own thread: the one holding the turn computes,
    the other waits, so the process runs one of them at a time, as it would run either alone."""

    def __init__(self, names):
        self._cond = threading.Condition()
        self._order = list(names)
        self._turn = self._order[0]
        self._active = set(names)
        self.error: BaseException | None = None

    def wait(self, name: str) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.error is not None or self._turn == name)
            if self.error is not None:
                raise _Aborted()

    def hand_over(self, name: str) -> None:
        with self._cond:
            others = [n for n in self._order if n != name and n in self._active]
            if others:
                self._turn = others[0]
            self._cond.notify_all()

    def leave(self, name: str) -> None:
        with self._cond:
            self._active.discard(name)
            if self._turn == name and self._active:
                self._turn = next(n for n in self._order if n in self._active)
            self._cond.notify_all()

    def fail(self, error: BaseException) -> None:
        with self._cond:
            self.error = self.error or error
            self._cond.notify_all()


class _TurnTimer(PhaseTimer):
    """A run's phase timer that hands the turn to the other run after every minibatch step
    (``HANDOFF_PHASES``), keeping the run's random state across the other run's turn and
    recording each turn's length: ``slices`` is ``[(seconds, turn included collection)]``."""

    def __init__(self, device: str, turns: _Turns, name: str):
        super().__init__(device)
        self.turns, self.name = turns, name
        self.run: Run | None = None
        self.slices: list[tuple[float, bool]] = []
        self._slice_start = 0.0
        self._slice_phases: set[str] = set()
        self._waited = 0.0

    def begin_turn(self) -> None:
        self._slice_start = time.perf_counter()

    def take_waited(self) -> float:
        waited, self._waited = self._waited, 0.0
        return waited

    @contextmanager
    def __call__(self, phase: str):
        with super().__call__(phase):
            yield
        self._slice_phases.add(phase)
        if phase in HANDOFF_PHASES:
            stop = time.perf_counter()
            self.slices.append((stop - self._slice_start, "collection" in self._slice_phases))
            self.run.rng = run_rng.capture(self.run.config.device)
            self.turns.hand_over(self.name)
            self.turns.wait(self.name)
            run_rng.restore(self.run.rng, self.run.config.device)
            self._slice_phases = set()
            self._slice_start = time.perf_counter()
            self._waited += self._slice_start - stop


def compare(config: TrainConfig | None = None, *, out: str | Path | None = None, progress: bool = True) -> dict:
    """Both backends on the same configuration and seed, taking turns minibatch by minibatch.

    The two runs live in one process (a thread each, one computing at a time) and hand over
    after every minibatch step, each keeping its own random stream: each computes exactly what
    it would alone, both see the same data, and a change in the machine's load hits both alike.
    The speed-up is the median of the per-round ratios (TorchRL's minibatch step over fastmarl's
    step of the same round) with their spread, and the same for whole iterations. Writes
    ``<out>/{torchrl,fastmarl}/`` (run folders), ``reward.png``, ``comparison.txt`` and
    ``comparison.json``.
    """
    config = config or TrainConfig()
    validate(config)
    root = Path(out) if out else Path("runs") / f"compare-{config.algo}-{config.scenario}-{time.strftime('%Y%m%d-%H%M%S')}"
    backends = ("torchrl", "fastmarl")
    turns = _Turns(backends)
    runs: dict[str, Run] = {}
    from tqdm import tqdm

    try:
        for backend in backends:
            timer = _TurnTimer(config.device, turns, backend)
            runs[backend] = Run.open(dataclasses.replace(config, backend=backend), out=root / backend, timer=timer)
            timer.run = runs[backend]
        for run in runs.values():
            run.begin()
        lock = threading.Lock()
        with tqdm(total=config.iters, disable=not progress, dynamic_ncols=True) as bar:

            def work(name: str) -> None:
                run = runs[name]
                try:
                    turns.wait(name)
                    run.timer.begin_turn()
                    while not run.done:
                        run.step()
                        with lock:
                            bar.update(0.5)
                            bar.set_description(f"reward {name} {run.rows[-1]['episode_reward_mean']:.3f}",
                                                refresh=False)
                except _Aborted:
                    pass
                except BaseException as err:  # noqa: BLE001  (re-raised by the main thread)
                    turns.fail(err)
                finally:
                    turns.leave(name)

            threads = [threading.Thread(target=work, args=(name,), name=f"fastmarl-compare-{name}")
                       for name in backends]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        if turns.error is not None:
            raise turns.error
    finally:
        for run in runs.values():
            run.close()
    results = {backend: run.finish() for backend, run in runs.items()}
    for backend, run in runs.items():
        results[backend]["slices"] = run.timer.slices
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
    from fastmarl.machine import device_name

    return device_name(device)


def _spread(values: list[float]) -> dict:
    ordered = sorted(values)
    if len(ordered) >= 4:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1, q3 = ordered[0], ordered[-1]
    return {"median": statistics.median(ordered), "q1": q1, "q3": q3, "min": ordered[0], "max": ordered[-1],
            "n": len(ordered)}


def speedup_ratios(results: dict) -> dict:
    """TorchRL / fastmarl time ratios of the two runs of ``compare``: per update round (one
    minibatch step each, the two taken in turn; overall and per iteration), per whole iteration,
    and per iteration's update phases (every phase but collection, the same code for both)."""
    a, b = results["torchrl"]["metrics"], results["fastmarl"]["metrics"]

    def update_seconds(row):
        return sum(v for k, v in row.items() if k.startswith("time_") and k != "time_collection")

    iteration = [x["seconds"] / y["seconds"] for x, y in zip(a, b)]
    update = [update_seconds(x) / update_seconds(y) for x, y in zip(a, b) if update_seconds(y) > 0]
    pairs = list(zip(results["torchrl"].get("slices", []), results["fastmarl"].get("slices", [])))
    rounds = [x / y for (x, x_collect), (y, y_collect) in pairs if not (x_collect or y_collect) and y > 0]
    per_iteration = []
    if rounds and len(a):
        size = len(pairs) // len(a) or 1
        for i in range(len(a)):
            chunk = [x / y for (x, xc), (y, yc) in pairs[i * size:(i + 1) * size] if not (xc or yc) and y > 0]
            if chunk:
                per_iteration.append(_spread(chunk))
    reward_diff = max((abs(x["episode_reward_mean"] - y["episode_reward_mean"]) for x, y in zip(a, b)), default=0.0)
    return {"round": _spread(rounds) if rounds else None, "round_by_iteration": per_iteration,
            "iteration": _spread(iteration), "update": _spread(update) if update else None,
            "max_reward_difference": reward_diff}


def _describe(spread: dict, unit: str = "iterations") -> str:
    return (f"median {spread['median']:.2f}x (interquartile {spread['q1']:.2f}-{spread['q3']:.2f}x, "
            f"range {spread['min']:.2f}-{spread['max']:.2f}x, {spread['n']} {unit})")


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
    # Medians over the iterations, not means: on a shared machine one slow iteration (load from
    # elsewhere) would otherwise dominate a phase's figure.
    lines += ["", "seconds per iteration (median over the iterations)",
              f"{'phase':<24}" + "".join(f"{b:>12}" for b in backends)]
    phases = list(dict.fromkeys(p for r in results.values() for p in r["phase_seconds"]))
    for phase in phases:
        cells = [f"{statistics.median(row.get(f'time_{phase}', 0.0) for row in results[b]['metrics']):>12.3f}"
                 if results[b]["metrics"] else f"{'':>12}" for b in backends]
        lines.append(f"{phase:<24}" + "".join(cells))
    lines.append(f"{'whole iteration':<24}" + "".join(
        f"{statistics.median(row['seconds'] for row in results[b]['metrics']):>12.3f}" if results[b]["metrics"]
        else f"{'':>12}" for b in backends))
    if set(backends) == {"torchrl", "fastmarl"}:
        ratios = speedup_ratios(results)
        lines += ["", "speed-up of fastmarl: TorchRL time / fastmarl time (the backends take turns every minibatch)"]
        if ratios["round"]:
            lines.append(f"  update, per minibatch round   {_describe(ratios['round'], 'rounds')}")
        lines.append(f"  whole iteration               {_describe(ratios['iteration'])}")
        if ratios["update"]:
            lines.append(f"  update phases per iteration   {_describe(ratios['update'])}")
        lines.append(f"  largest difference in mean episode reward between the backends: "
                     f"{ratios['max_reward_difference']:.3g}")
    return "\n".join(lines)


__all__ = ["Run", "open_checkpoint", "run_loop", "train", "compare", "comparison_table", "default_run_dir", "phase_table", "speedup_ratios"]
