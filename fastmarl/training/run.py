"""The run folder: metrics, reward curve, configuration, phase timings, checkpoint.

Every file is written atomically (a temporary file ``.<name>.<random>.tmp`` in the same folder,
then ``os.replace``), so a crash never leaves a half-written checkpoint or metrics file behind;
a temporary file left by a killed process is removed when the next run opens the folder.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

CHECKPOINT = "checkpoint.pt"
# Phases of an iteration, in the order they run: ``sample`` is drawing the minibatch from the
# replay buffer (PPO: a slice of a random permutation; QMIX: uniform indices), a copy of
# ``minibatch`` frames.
# ``compile`` is the first (compiling) call of a compiled update step, ``update`` the later
# calls of one (forward, backward and optimizer in one graph: no split between them).
# ``allreduce``: under torchrun, the gradients averaged over the ranks, including the wait for
# the slowest rank (uncompiled steps; a compiled step does it inside ``update``).
PHASES = ("collection", "gae", "sample", "loss_forward", "backward", "allreduce", "optimizer", "compile", "update")
# The files a run folder holds (all written through ``atomic_write_bytes``).
RUN_FILES = ("config.json", "metrics.json", "metrics.csv", "reward.png", "phases.txt", "phases.json", CHECKPOINT)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file 0600; give it the usual umask-derived mode.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_checkpoint(path: Path, state: dict) -> None:
    """``torch.save`` to memory, then an atomic write: the file is whole or absent."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict:
    """Tensors and plain containers only (``weights_only=True``): a checkpoint runs no code."""
    return torch.load(path, map_location="cpu", weights_only=True)


class PhaseTimer:
    """Wall time per training phase, with a device sync at each boundary on CUDA.

    ``with timer("backward"): ...`` adds to the phase's total for the current iteration.
    """

    def __init__(self, device: torch.device):
        self.sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
        self.current: dict[str, float] = defaultdict(float)
        self.history: list[dict[str, float]] = []

    @contextmanager
    def __call__(self, phase: str):
        self.sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.current[phase] += time.perf_counter() - start

    def end_iteration(self) -> dict[str, float]:
        done, self.current = dict(self.current), defaultdict(float)
        self.history.append(done)
        return done

    def totals(self) -> dict[str, float]:
        total: dict[str, float] = defaultdict(float)
        for it in self.history:
            for phase, seconds in it.items():
                total[phase] += seconds
        return dict(total)


def phase_table(totals: dict[str, float], iterations: int) -> str:
    """A text table of seconds per iteration and share of the total per phase."""
    whole = sum(totals.values()) or 1.0
    order = [p for p in PHASES if p in totals] + sorted(set(totals) - set(PHASES))
    lines = [f"{'phase':<24}{'s/iter':>10}{'share':>9}"]
    for phase in order:
        lines.append(f"{phase:<24}{totals[phase] / max(iterations, 1):>10.3f}{totals[phase] / whole:>8.1%}")
    lines.append(f"{'total':<24}{whole / max(iterations, 1):>10.3f}{1:>8.0%}")
    return "\n".join(lines)


def stale_temporaries(folder: Path) -> list[Path]:
    """Temporary files of ``atomic_write_bytes`` for the run files, left by a killed process."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for name in RUN_FILES for p in folder.glob(f".{name}.*.tmp") if p.is_file())


class RunFolder:
    """Writes a run's files as training goes (each one atomically).

    Creating it makes the folder and removes stale temporary files: call it only once the run
    is known to start (options and checkpoint checked), so that a refused run writes nothing.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        for stale in stale_temporaries(self.path):
            stale.unlink(missing_ok=True)

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    def write_config(self, config_json: str) -> None:
        atomic_write_text(self.path / "config.json", config_json + "\n")

    def write_metrics(self, rows: list[dict]) -> None:
        atomic_write_text(self.path / "metrics.json", json.dumps(rows, indent=2) + "\n")
        fields = list(dict.fromkeys(k for row in rows for k in row))
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path / "metrics.csv", out.getvalue())

    def write_phases(self, totals: dict[str, float], iterations: int) -> None:
        atomic_write_text(self.path / "phases.txt", phase_table(totals, iterations) + "\n")
        atomic_write_text(self.path / "phases.json", json.dumps(
            {"iterations": iterations, "seconds": totals}, indent=2) + "\n")

    def write_reward_plot(self, curves: dict[str, list[float]], title: str, name: str = "reward.png") -> None:
        plot_rewards(self.path / name, curves, title)


def plot_rewards(path: Path, curves: dict[str, list[float]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", label=label)
    ax.set_xlabel("iteration")
    ax.set_ylabel("mean episode reward")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
