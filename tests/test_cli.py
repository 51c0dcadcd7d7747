"""The command line: --help speed and text, resume errors (one line, exit 2, nothing written),
options that conflict with --resume, stale temporary files, missing extras."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastmarl import cli
from fastmarl.training import RunError, TrainConfig, train
from fastmarl.training.run import load_checkpoint

TINY = ["--iters", "1", "--frames-per-batch", "40", "--max-steps", "20", "--epochs", "1", "--minibatch", "20",
        "--num-cells", "8", "--no-progress"]


def fastmarl(*args, cwd=None, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastmarl", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})})


def snapshot(folder: Path) -> dict:
    """Every file in a folder with its bytes' hash and its modification time."""
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(Path(folder).iterdir())}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A 2-iteration tiny MAPPO run (its folder is copied by tests that corrupt it)."""
    run = tmp_path_factory.mktemp("runs") / "mappo"
    train(TrainConfig(iters=2, frames_per_batch=40, max_steps=20, epochs=1, minibatch=20, num_cells=8),
          out=run, progress=False)
    return run


def _copy(run: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in run.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


# ---- --help ------------------------------------------------------------------------------------

def test_help_does_not_import_torch():
    # What keeps `fastmarl --help` fast: no torch (~1.3 s to import), TorchRL, VMAS or matplotlib
    # behind any --help. (Timed by hand, not here: a wall-clock bound on a shared machine is noise.)
    code = ("import sys, fastmarl.cli as c\n"
            "for argv in (['--help'], ['train', '--help'], ['compare', '--help'], ['bench', '--help'], "
            "['demo', '--help']):\n"
            "    try:\n        c.main(argv)\n    except SystemExit:\n        pass\n"
            "heavy = sorted(m for m in ('torch', 'torchrl', 'tensordict', 'vmas', 'matplotlib') if m in sys.modules)\n"
            "print('HEAVY', heavy)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
    assert fastmarl("--help").returncode == 0


def test_help_text_has_no_rst_markup_and_every_demo_option_is_described(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text and "fastmarl train" in text and "fastmarl bench" in text
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    text = capsys.readouterr().out
    for option, default in (("--envs", "60"), ("--steps", "100"), ("--agents", "3"), ("--repeats", "50"),
                            ("--device", "cpu"), ("--seed", "0"), ("--scenario", "navigation")):
        line = next(line for line in text.splitlines() if line.strip().startswith(option))
        block = text[text.index(line):].split("\n  --")[0]
        assert f"(default: {default})" in block, (option, block)
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in ("--eps-anneal-frames", "--no-save-buffer", "--resume-iters", "(default: 30000)"):
        assert flag in text


def test_missing_train_extra_is_a_clear_error(tmp_path):
    # A meta-path hook hides vmas, as in an install without the [train] extra.
    code = """
import sys, importlib.abc, importlib.util
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "vmas" or name.startswith("vmas."):
            raise ImportError("hidden")
sys.meta_path.insert(0, Hide())
real = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name == "vmas" else real(name, *a)
from fastmarl.cli import main
sys.exit(main(["train", "--out", sys.argv[1]]))
"""
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == ("fastmarl train: error: fastmarl train needs the [train] extra (missing: vmas): "
                                     "pip install 'fastmarl[train]'")
    assert not (tmp_path / "run").exists()


# ---- options that conflict with --resume ---------------------------------------------------------

@pytest.mark.parametrize("extra,flags", [
    (["--lr", "0.1"], "--lr"),
    (["--backend", "torchrl"], "--backend"),
    (["--iters", "5"], "--iters"),
    (["--out", "elsewhere"], "--out"),
    (["--no-save-buffer"], "--no-save-buffer"),
    (["--compile", "--seed", "3"], "--compile, --seed"),
])
def test_options_conflicting_with_resume_are_rejected(finished_run, extra, flags, capsys):
    before = snapshot(finished_run)
    assert cli.main(["train", "--resume", str(finished_run), "--resume-iters", "3", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"fastmarl train: error: {flags} cannot be combined with --resume") and "\n" not in err
    assert snapshot(finished_run) == before


def test_resume_iters_without_resume_is_rejected(tmp_path, capsys):
    assert cli.main(["train", "--resume-iters", "5", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == (
        "fastmarl train: error: --resume-iters needs --resume RUN_FOLDER (a new run takes --iters)")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["train", "compare"])
def test_out_that_cannot_be_a_folder_is_one_line_before_any_work(tmp_path, capsys, command):
    # Was a FileNotFoundError traceback from the run folder's mkdir, after the environments were built.
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert cli.main([command, "--out", str(blocker / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"fastmarl {command}: error: --out {blocker / 'run'}: {blocker} is a file, not a folder"


def test_run_folder_os_error_during_the_run_is_one_line(tmp_path, capsys, monkeypatch):
    import fastmarl.training as training

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "run" / "checkpoint.pt"))

    monkeypatch.setattr(training, "train", full_disk)
    assert cli.main(["train", "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastmarl train: error: cannot write the run folder: [Errno 28] No space left on device")
    assert "\n" not in err


# ---- resume errors: one line, exit 2, nothing written ----------------------------------------------

def _corrupt_zero(path):
    path.write_bytes(b"")


def _corrupt_random(path):
    path.write_bytes(os.urandom(4096))


def _corrupt_truncated(path):
    path.write_bytes(path.read_bytes()[:1000])


def _edit(change):
    def corrupt(path):
        state = load_checkpoint(path)
        change(state)
        torch.save(state, path)
    return corrupt


CORRUPTIONS = {
    "zero-byte": (_corrupt_zero, r"checkpoint.pt is empty \(0 bytes\)"),
    "random bytes": (_corrupt_random, r"is not a checkpoint written by fastmarl train"),
    "truncated": (_corrupt_truncated, r"checkpoint.pt is not a (readable fastmarl )?checkpoint"),
    "missing trainer": (_edit(lambda s: s.pop("trainer")), r"lacks 'trainer'"),
    "missing policy": (_edit(lambda s: s["trainer"].pop("policy")),
                       r"does not fit the networks of its configuration \(KeyError: .*policy"),
    "architecture": (_edit(lambda s: s["config"].update(num_cells=32)),
                     r"does not fit the networks of its configuration \(RuntimeError: .*size mismatch"),
    "other algo": (_edit(lambda s: s["config"].update(algo="qmix")), r"does not fit the networks"),
    "unknown field": (_edit(lambda s: s["config"].update(eps_decay_frac=0.5)),
                      r"configuration saved in .* is invalid: unknown configuration field\(s\) \['eps_decay_frac'\]"),
    "invalid config": (_edit(lambda s: s["config"].update(gamma=2.0)), r"--gamma must lie in \[0, 1\]"),
    "inconsistent": (_edit(lambda s: s.update(iteration=5)), r"is inconsistent \(iteration 5, 2 metric rows\)"),
    "no rng": (_edit(lambda s: s.update(rng="x")), r"has no usable RNG state"),
    "not a dict": (_edit(lambda s: (s.clear(), s.update(config=[]))), r"lacks 'iteration'"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_every_resume_problem_is_one_line_exit_2_and_nothing_written(finished_run, tmp_path, name, capsys):
    corrupt, message = CORRUPTIONS[name]
    run = _copy(finished_run, tmp_path / "run")
    corrupt(run / "checkpoint.pt")
    (run / ".checkpoint.pt.stale.tmp").write_bytes(b"partial")
    before = snapshot(run)
    assert cli.main(["train", "--resume", str(run), "--resume-iters", "3", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fastmarl train: error: --resume "), err
    import re
    assert re.search(message, err), err
    assert snapshot(run) == before  # not even the stale temporary file is touched


def test_resume_iters_not_beyond_the_run_names_the_right_flag(finished_run, capsys):
    before = snapshot(finished_run)
    assert cli.main(["train", "--resume", str(finished_run), "--resume-iters", "1"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"fastmarl train: error: --resume-iters 1: the run in {finished_run} already has 2 iterations; "
        f"pass --resume-iters N with N > 2")
    assert cli.main(["train", "--resume", str(finished_run)]) == 2
    assert "the run is complete (2 of 2 iterations); pass --resume-iters N with N > 2" in capsys.readouterr().err
    assert snapshot(finished_run) == before  # config.json still says 2 iterations


def test_resume_missing_folder_or_checkpoint(tmp_path, capsys):
    assert cli.main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip().endswith("nowhere: no such run folder")
    (tmp_path / "empty").mkdir()
    assert cli.main(["train", "--resume", str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.strip().endswith("no checkpoint.pt in that folder")
    assert list((tmp_path / "empty").iterdir()) == []


def test_run_error_is_a_value_error():
    assert issubclass(RunError, ValueError)


# ---- stale temporary files ---------------------------------------------------------------------

def test_stale_temporary_files_are_removed_on_the_next_start(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path / "run")
    stale = [run / ".checkpoint.pt.k1ll3d.tmp", run / ".metrics.json.x.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    keep = run / ".notes.tmp"  # not one of ours
    keep.write_text("mine")
    result = train(resume=run, iters=3, progress=False)
    assert len(result["metrics"]) == 3
    assert not any(p.exists() for p in stale) and keep.exists()
    # A fresh run into a folder with leftovers cleans them too.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / ".config.json.abc.tmp").write_text("{")
    train(TrainConfig(iters=1, frames_per_batch=40, max_steps=20, epochs=1, minibatch=20, num_cells=8),
          out=fresh, progress=False)
    assert not list(fresh.glob(".*.tmp"))


# ---- end to end through the installed command ------------------------------------------------------

@pytest.mark.slow_cli
def test_cli_train_resume_round_trip_and_clean_output(tmp_path):
    run = tmp_path / "run"
    first = fastmarl("train", *TINY, "--out", run)
    assert first.returncode == 0, first.stderr[-3000:]
    # TorchRL's INFO lines (raw ANSI colour codes) stay out of the output.
    assert "\x1b[" not in first.stdout + first.stderr and "[torchrl][INFO]" not in first.stderr
    config = (run / "config.json").read_text()
    assert '"continuous_actions": true' in config  # PPO acts in a continuous space
    resumed = fastmarl("train", "--resume", run, "--resume-iters", "2", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert load_checkpoint(run / "checkpoint.pt")["iteration"] == 2
    assert '"iters": 2' in (run / "config.json").read_text()
