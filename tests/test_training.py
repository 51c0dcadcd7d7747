"""``fastmarl train`` / ``compare`` end to end on tiny configurations (seconds each)."""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from fastmarl.training import TrainConfig, compare, train, validate
from fastmarl.training.run import load_checkpoint

TIMING = ("seconds", "fps")


def tiny(algo="mappo", **kwargs):
    base = dict(algo=algo, iters=2, frames_per_batch=60, max_steps=20, epochs=2, minibatch=20, num_cells=16,
                qmix_updates_per_iter=3, buffer_size=1000)
    base.update(kwargs)
    return TrainConfig(**base)


def _without_timing(rows):
    return [{k: v for k, v in row.items() if k not in TIMING and not k.startswith("time_")} for row in rows]


@pytest.mark.parametrize("algo", ["mappo", "ippo", "qmix"])
def test_tiny_run_writes_the_run_folder(tmp_path, algo):
    result = train(tiny(algo), out=tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for name in ("config.json", "metrics.json", "metrics.csv", "reward.png", "phases.txt", "phases.json", "checkpoint.pt"):
        assert (run / name).is_file(), name
    rows = json.loads((run / "metrics.json").read_text())
    assert [r["iteration"] for r in rows] == [1, 2]
    assert all(r["frames"] == 60 and r["fps"] > 0 for r in rows)
    phases = json.loads((run / "phases.json").read_text())["seconds"]
    expected = {"collection", "loss_forward", "backward", "optimizer"} | ({"gae"} if algo != "qmix" else set())
    assert expected <= set(phases)
    assert (run / "reward.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((run / "config.json").read_text())["algo"] == algo
    state = load_checkpoint(run / "checkpoint.pt")  # weights_only=True
    assert state["iteration"] == 2 and len(state["metrics"]) == 2
    assert result["metrics"] == rows


@pytest.mark.parametrize("algo", ["mappo", "qmix"])
def test_same_seed_same_backend_same_metrics(tmp_path, algo):
    a = train(tiny(algo, seed=3), out=tmp_path / "a", progress=False)
    b = train(tiny(algo, seed=3), out=tmp_path / "b", progress=False)
    assert _without_timing(a["metrics"]) == _without_timing(b["metrics"])


@pytest.mark.parametrize("algo", ["mappo", "qmix"])
def test_backends_give_the_same_first_iteration_losses(tmp_path, algo):
    runs = {backend: train(tiny(algo, backend=backend, iters=1), out=tmp_path / backend, progress=False)
            for backend in ("torchrl", "fastmarl")}
    a, b = (runs[k]["metrics"][0] for k in ("torchrl", "fastmarl"))
    # Same data, same first minibatch: the same losses (then Adam steps compound tiny
    # floating-point differences, so later values only agree loosely).
    keys = ["first_loss"] if algo == "qmix" else ["first_loss_objective", "first_loss_critic", "first_loss_entropy"]
    for key in keys:
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    assert a["episode_reward_mean"] == pytest.approx(b["episode_reward_mean"], rel=1e-6)


def test_resume_continues_from_the_checkpoint(tmp_path):
    run = tmp_path / "run"
    train(tiny(iters=1), out=run, progress=False)
    saved = load_checkpoint(run / "checkpoint.pt")
    result = train(resume=run, iters=2, progress=False)
    assert [r["iteration"] for r in result["metrics"]] == [1, 2]
    assert result["metrics"][0] == saved["metrics"][0]
    assert load_checkpoint(run / "checkpoint.pt")["iteration"] == 2
    with pytest.raises(ValueError, match=r"the run is complete \(2 of 2 iterations\)"):
        train(resume=run, progress=False)


def _flat(tree, prefix=""):
    """Nested dicts/lists of a checkpoint's trainer state as ``{path: leaf}``."""
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}/{key}").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, value in enumerate(tree) for k, v in _flat(value, f"{prefix}/{i}").items()}
    return {prefix: tree}


def _assert_same_state(a, b):
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    for key in fa:
        if isinstance(fa[key], torch.Tensor):
            assert torch.equal(fa[key], fb[key]), key
        else:
            assert fa[key] == fb[key], key


# QMIX: a buffer smaller than the frames of the run wraps around, so the write cursor matters;
# PPO: 60 frames in minibatches of 25 leave a partial permutation in the sampler between iterations.
@pytest.mark.parametrize("algo,change", [
    ("mappo", dict(minibatch=25)),
    ("ippo", dict()),
    ("qmix", dict(buffer_size=100, minibatch=25)),
])
def test_resume_is_exact(tmp_path, algo, change):
    """N iterations in one run == N/2, then --resume to N: identical metrics and parameters."""
    config = tiny(algo, iters=4, **change)
    whole = train(config, out=tmp_path / "whole", progress=False)
    train(dataclasses.replace(config, iters=2), out=tmp_path / "halves", progress=False)
    resumed = train(resume=tmp_path / "halves", iters=4, progress=False)
    assert _without_timing(whole["metrics"]) == _without_timing(resumed["metrics"])
    a, b = (load_checkpoint(tmp_path / name / "checkpoint.pt") for name in ("whole", "halves"))
    _assert_same_state(a["trainer"], b["trainer"])
    _assert_same_state(a["rng"], b["rng"])
    # Not a vacuous check: the parameters moved and the rewards changed over the run.
    assert len({row["episode_reward_mean"] for row in whole["metrics"]}) > 1


def test_qmix_checkpoint_holds_the_replay_buffer_unless_told_not_to(tmp_path):
    config = tiny("qmix", iters=2, buffer_size=100)
    train(config, out=tmp_path / "with", progress=False)
    state = load_checkpoint(tmp_path / "with" / "checkpoint.pt")["trainer"]
    # 2 iterations x 60 frames into a buffer of 100: full, the cursor 20 rows past the start.
    assert state["buffer"]["length"] == 100 and state["buffer"]["writer"]["_cursor"] == 20
    rows = state["buffer"]["rows"]
    assert rows["agents"]["observation"].shape[0] == 100 and set(rows) >= {"agents", "next", "state"}
    train(dataclasses.replace(config, save_buffer=False), out=tmp_path / "without", progress=False)
    assert "buffer" not in load_checkpoint(tmp_path / "without" / "checkpoint.pt")["trainer"]
    # Only the filled rows are saved (not the preallocated capacity, nor a view's whole storage):
    # 120 frames of the 894 bytes QMixerLoss reads, whatever --buffer-size.
    sizes = {}
    for save in (True, False):
        folder = tmp_path / f"big-{save}"
        train(dataclasses.replace(config, buffer_size=20_000, save_buffer=save), out=folder, progress=False)
        sizes[save] = (folder / "checkpoint.pt").stat().st_size
    assert 120 * 894 <= sizes[True] - sizes[False] <= 120 * 894 + 20_000, sizes
    # Without the buffer the resumed run starts from an empty buffer: no longer the same run.
    whole = train(dataclasses.replace(config, iters=3, save_buffer=False), out=tmp_path / "whole", progress=False)
    resumed = train(resume=tmp_path / "without", iters=3, progress=False)
    assert _without_timing(whole["metrics"])[:2] == _without_timing(resumed["metrics"])[:2]
    assert _without_timing(whole["metrics"])[2] != _without_timing(resumed["metrics"])[2]


def test_qmix_exploration_anneals_over_fixed_frames_whatever_the_run_length(tmp_path):
    # The ε each batch was collected with: it falls by 60 frames of the 240 it anneals over per
    # iteration, in a 2-iteration run as in a 5-iteration one.
    short = train(tiny("qmix", iters=2, eps_anneal_frames=240), out=tmp_path / "short", progress=False)
    long = train(tiny("qmix", iters=5, eps_anneal_frames=240), out=tmp_path / "long", progress=False)
    expected = [1.0 - 0.95 * min(1.0, 60 * i / 240) for i in range(5)]
    assert [r["epsilon"] for r in short["metrics"]] == pytest.approx(expected[:2], abs=1e-5)
    assert [r["epsilon"] for r in long["metrics"]] == pytest.approx(expected, abs=1e-5)


def test_config_json_names_the_action_space(tmp_path):
    train(tiny("mappo", iters=1), out=tmp_path / "ppo", progress=False)
    train(tiny("qmix", iters=1), out=tmp_path / "qmix", progress=False)
    assert json.loads((tmp_path / "ppo" / "config.json").read_text())["continuous_actions"] is True
    assert json.loads((tmp_path / "qmix" / "config.json").read_text())["continuous_actions"] is False
    # Derived fields are written for the reader and ignored when read back.
    data = json.loads((tmp_path / "ppo" / "config.json").read_text())
    assert TrainConfig.from_dict(data) == tiny("mappo", iters=1)


@pytest.mark.parametrize("algo", ["mappo", "qmix"])
def test_compare_alternates_without_changing_either_run(tmp_path, algo):
    """The backends take turns in one process, each with its own RNG stream: each one's metrics
    are those of a run on its own, and they see the same data (same first-iteration rewards)."""
    config = tiny(algo, iters=2)
    result = compare(config, out=tmp_path / "cmp", progress=False)
    for name in ("reward.png", "comparison.txt", "comparison.json"):
        assert (tmp_path / "cmp" / name).is_file()
    for backend in ("torchrl", "fastmarl"):
        alone = train(dataclasses.replace(config, backend=backend), out=tmp_path / backend, progress=False)
        assert _without_timing(result["results"][backend]["metrics"]) == _without_timing(alone["metrics"])
    rows = {b: result["results"][b]["metrics"] for b in ("torchrl", "fastmarl")}
    assert rows["torchrl"][0]["episode_reward_mean"] == rows["fastmarl"][0]["episode_reward_mean"]
    speedup = result["speedup"]
    assert speedup["iteration"]["n"] == 2 and speedup["iteration"]["min"] <= speedup["iteration"]["median"]
    # The runs hand over after every minibatch step: a round is one step of each; the first step of
    # an iteration shares its turn with the collection and is left out of the per-round ratios.
    steps = 3 if algo == "qmix" else (60 // 20) * 2
    assert len(result["results"]["torchrl"]["slices"]) == len(result["results"]["fastmarl"]["slices"]) == 2 * steps
    assert speedup["round"]["n"] == 2 * (steps - 1) and len(speedup["round_by_iteration"]) == 2
    assert "per minibatch round" in result["table"] and "interquartile" in result["table"]
    # Each run's seconds exclude the other run's turns.
    for backend in ("torchrl", "fastmarl"):
        for row in result["results"][backend]["metrics"]:
            assert row["seconds"] >= sum(v for k, v in row.items() if k.startswith("time_")) * 0.99
    saved = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert saved["speedup"]["iteration"]["median"] == pytest.approx(speedup["iteration"]["median"])
    assert len(saved["fastmarl"]["seconds"]) == 2 and saved["config"]["algo"] == algo


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(scenario="nowhere"), r"--scenario 'nowhere' is not a VMAS scenario"),
        (dict(frames_per_batch=61), r"--frames-per-batch 61 is not divisible by --max-steps 20"),
        (dict(minibatch=-4), r"--minibatch must be a positive integer, got -4"),
        (dict(iters=0), r"--iters must be a positive integer"),
        (dict(algo="dqn"), r"--algo must be one of"),
        (dict(backend="jax"), r"--backend must be one of"),
        (dict(gamma=1.5), r"--gamma must lie in \[0, 1\]"),
        (dict(minibatch=100), r"--minibatch 100 is larger than --frames-per-batch 60"),
        (dict(device="tpu"), r"--device must be cpu or cuda"),
    ],
)
def test_bad_options_are_rejected_before_any_work(tmp_path, change, match):
    config = dataclasses.replace(tiny(), **change)
    with pytest.raises(ValueError, match=match):
        validate(config)
    with pytest.raises(ValueError, match=match):
        train(config, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_cli_rejects_bad_options_with_exit_code_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fastmarl", "train", "--frames-per-batch", "601", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "--frames-per-batch 601 is not divisible by --max-steps 100" in result.stderr
    assert not (tmp_path / "run").exists()


def test_cli_train_tiny(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fastmarl", "train", "--iters", "1", "--frames-per-batch", "40", "--max-steps", "20",
         "--epochs", "1", "--minibatch", "20", "--num-cells", "8", "--out", str(tmp_path / "run"), "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mean episode reward per iteration" in result.stdout and "collection" in result.stdout


def test_checkpoint_is_written_atomically(tmp_path, monkeypatch):
    # A crash while writing leaves the previous checkpoint intact and no temporary file behind.
    from fastmarl.training import run as run_module

    path = tmp_path / "checkpoint.pt"
    run_module.save_checkpoint(path, {"x": torch.ones(2)})

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(run_module.os, "replace", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        run_module.save_checkpoint(path, {"x": torch.zeros(2)})
    assert torch.equal(run_module.load_checkpoint(path)["x"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


@pytest.mark.parametrize("algo", ["mappo"])
def test_compile_runs_update_step_with_a_compile_phase(tmp_path, monkeypatch, algo):
    # The --compile plumbing (UpdateStep, phases "compile" then "update"), with dynamo's eager
    # backend standing in for Inductor so that the test takes seconds (tests/test_update.py
    # compiles the same steps with Inductor). QMIX's trainer goes through the same two helpers
    # (make_update_step, timed_update); "qmix" here adds 15 s.
    compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: compile(fn, **{**kwargs, "backend": "eager"}))
    torch._dynamo.reset()
    result = train(tiny(algo, compile=True), out=tmp_path / "run", progress=False)
    phases = json.loads((tmp_path / "run" / "phases.json").read_text())["seconds"]
    assert {"compile", "update"} <= set(phases) and "loss_forward" not in phases
    eager = train(tiny(algo), out=tmp_path / "eager", progress=False)
    # Same seed, same data: the first iteration's first losses agree with the eager loop's.
    keys = ["first_loss"] if algo == "qmix" else ["first_loss_objective", "first_loss_critic"]
    for key in keys:
        assert result["metrics"][0][key] == pytest.approx(eager["metrics"][0][key], rel=1e-5, abs=1e-7), key


def test_cli_cudagraph_needs_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is available: --cudagraph is valid here")
    result = subprocess.run(
        [sys.executable, "-m", "fastmarl", "train", "--cudagraph", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "fastmarl train: error: --cudagraph needs --device cuda (CUDA graphs capture CUDA work), got --device cpu"]
    assert not (tmp_path / "run").exists()
