"""Data-parallel training on torch.distributed (issue 15), on the CPU with gloo.

- Global advantage statistics: per-agent (count, mean, M2) partials merged exactly (Chan et al.)
  equal the concatenated advantage's mean and unbiased std in float64, and the surrogate's
  value and gradients on 2 ranks equal one process on the concatenation (eager and compiled).
- Exactness: 3 update steps of ``MAPPOLoss`` + ``UpdateStep(process_group=...)`` on 2 ranks,
  shards A and B, give the parameters of one process on A+B with the same minibatches; with
  the global statistics off, they do not.
- ``fastmarl train`` on 2 ranks (torchrun): the run folder, exact resume, the same metrics
  from the same seed, QMIX, and a failing or hanging rank ending the run with its name.

Each test spawns its own 2 processes (``tests/dist_workers.py`` holds what they run).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import dist_workers as W
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import assert_close

import fastmarl.objectives as fm
from fastmarl.functional import ppo_clip_loss
from fastmarl.ops.ppo.collective import merge_moments, shard_moments
from fastmarl.ops.ppo.naive import standardize_advantage

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(name: str, out: Path, world: int = 2, timeout: float = 150, **kwargs) -> list:
    """Run ``dist_workers.<name>`` on ``world`` spawned gloo ranks; their results, in rank order."""
    ctx = mp.start_processes(W.entry, args=(world, _free_port(), name, str(out), kwargs), nprocs=world,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for process in ctx.processes:
                process.kill()
            pytest.fail(f"{name} on {world} ranks did not finish within {timeout} s")
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(world)]


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("split", [(1, 15), (5, 11), (4, 4, 8), (2, 3, 5, 6)])
def test_chan_merge_equals_concatenation(split, dtype):
    # The merge alone (no process): shards of any sizes, means 1000, -3 and 0.5 per agent
    # against stds 2, 0.01 and 1; float64 to 1e-12, float32 to its rounding (against the exact
    # statistics of the float32 data).
    x = W.advantages(torch.float64, rows=sum(split)).to(dtype)
    n, mean, m2 = merge_moments(torch.stack([shard_moments(s, (0, 2)) for s in x.split(list(split))]))
    exact = x.double()
    tol = dict(atol=0, rtol=1e-12) if dtype == torch.float64 else dict(atol=0, rtol=1e-5)
    assert torch.equal(n.reshape(-1), torch.full((3,), float(sum(split)), dtype=dtype))
    assert_close(mean, exact.mean((0, 2), keepdim=True), **tol, name="mean")
    assert_close((m2 / (n - 1)).sqrt(), exact.std((0, 2), keepdim=True), **tol, name="std")


def test_chan_merge_is_stable_where_sums_of_squares_cancel():
    # Why partials (count, mean, M2) and not (count, Σa, Σa²): advantages of 10,000 ± 1 in
    # float32. The sums lose the variance entirely; Chan's merge keeps it to 1e-3.
    g = torch.Generator().manual_seed(6)
    x = (1e4 + torch.randn(64, 1, 1, generator=g, dtype=torch.float64)).float()
    shards = x.split([20, 44])
    n, _, m2 = merge_moments(torch.stack([shard_moments(s, (0, 2)) for s in shards]))
    exact = x.double().var()
    sums = torch.stack([torch.stack([s.sum(), s.square().sum()]) for s in shards]).sum(0)
    naive = (sums[1] - sums[0] ** 2 / 64) / 63
    assert abs(m2.item() / 63 - exact) < 1e-3 * exact
    assert abs(naive.item() - exact) > 0.5 * exact


def test_merged_statistics_and_gradients_on_two_ranks(tmp_path):
    """2 gloo ranks: the merged per-agent mean/std and each rank's standardised shard equal the
    concatenation's (float64, unequal shards); the surrogate and its gradients (log-prob, and
    the advantage through the merged mean and std) equal one process's on the concatenation,
    eager and under torch.compile(fullgraph=True)."""
    ranks = run_ranks("statistics", tmp_path)
    full = W.advantages(torch.float64)
    for rank, out in enumerate(ranks):
        assert out["count"].reshape(-1).tolist() == [16.0, 16.0, 16.0]
        assert_close(out["mean"], full.mean((0, 2), keepdim=True), atol=0, rtol=1e-12, name="mean")
        assert_close(out["std"], full.std((0, 2), keepdim=True), atol=0, rtol=1e-12, name="std")
        expected = W.shard(standardize_advantage(full, (-2,)), rank)
        assert_close(out["standardized"], expected, atol=1e-12, rtol=1e-12, name=f"rank {rank} standardised")
    # One process on the concatenated 16 rows; with reduction="mean" its loss is the ranks'
    # mean and its gradient 1/2 of what each rank gets (the all-gather's backward sums over
    # the ranks; averaging the parameters' gradients divides by 2 again).
    rows = (8, 8)
    log_prob, prev = W.policy_inputs(16)
    loss, grad_lp, grad_adv = W.surrogate_and_grads(log_prob, prev, W.advantages(torch.float64, 16), None)
    for mode in ("eager", "compiled"):
        losses = torch.stack([out[mode][0] for out in ranks])
        assert_close(losses.mean(), loss, atol=1e-14, rtol=1e-12, name=f"{mode} loss")
        for rank, out in enumerate(ranks):
            _, lp, adv = out[mode]
            # (through 1/std with agent 1's std of 0.01: float64 rounding x 100)
            assert_close(lp / 2, W.shard(grad_lp, rank, rows), atol=1e-12, rtol=1e-10, name=f"{mode} d/d log_prob")
            assert_close(adv / 2, W.shard(grad_adv, rank, rows), atol=1e-12, rtol=1e-10, name=f"{mode} d/d advantage")
    assert grad_adv.abs().max() > 1e-3  # the gradient through the statistics is not trivially zero


# --------------------------------------------------------------------------- exactness


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def test_two_ranks_update_equals_one_process_on_the_concatenation(tmp_path):
    """3 steps of MAPPOLoss (per-agent standardisation) + UpdateStep(Adam, clipping) on 2 ranks,
    shards A and B (B's advantages 3A+2), against one process on A+B with the same minibatches:
    the same parameters to float32 rounding; with the global statistics off (each rank
    standardising its own shard, as TorchRL does) they differ by orders of magnitude more."""
    ranks = run_ranks("updates", tmp_path)
    single = W.ppo_updates(W.minibatches(3, 16))
    single64 = W.ppo_updates(W.minibatches(3, 16, torch.float64), dtype=torch.float64)
    # Both ranks hold the same parameters (averaged gradients, same Adam state).
    for mode in ("global", "local", "global64"):
        assert _max_difference(ranks[0][mode]["params"], ranks[1][mode]["params"]) == 0.0
    exact = _max_difference(ranks[0]["global"]["params"], single["params"])
    exact64 = _max_difference(ranks[0]["global64"]["params"], single64["params"])
    per_shard = _max_difference(ranks[0]["local"]["params"], single["params"])
    print(f"\nmax |param difference| against one process on A+B after 3 steps: global statistics "
          f"{exact:.3g} (float32), {exact64:.3g} (float64); per-rank statistics {per_shard:.3g} (float32)")
    assert exact < 1e-6 and exact64 < 1e-12
    assert per_shard > 1e-4 and per_shard > 100 * max(exact, 1e-9)
    # The loss each step reports: the mean of the two ranks' is the single process's.
    for step, metrics in enumerate(single["metrics"]):
        for key in ("loss_objective", "loss_critic"):
            mean = (ranks[0]["global"]["metrics"][step][key] + ranks[1]["global"]["metrics"][step][key]) / 2
            assert_close(mean, metrics[key], atol=1e-6, rtol=1e-5, name=f"step {step} {key}")


@pytest.mark.compile
def test_compiled_update_step_averages_gradients_in_its_graph(tmp_path):
    """UpdateStep(compile=True, process_group=...) on 2 ranks: the all-reduce is in the one
    graph (no break) and the parameters equal the eager step's and one process's on A+B."""
    ranks = run_ranks("compiled_updates", tmp_path)
    single = W.regression_updates(W.regression_batches())
    for out in ranks:
        assert out["graph_breaks"] == 0
        assert _max_difference(out["compiled"], out["eager"]) < 1e-6
        assert _max_difference(out["eager"], single) < 1e-6
    assert _max_difference(ranks[0]["compiled"], ranks[1]["compiled"]) == 0.0


# --------------------------------------------------------------------------- one process


@pytest.fixture
def one_rank_group():
    """A gloo group of one rank in this process (a HashStore: no port), destroyed after."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield dist.group.WORLD
    dist.destroy_process_group()


def test_one_rank_group_is_the_single_process_loss_and_option_stays_out_of_state_dict(one_rank_group):
    from ppo_cases import KEYS, make_actor, make_batch, make_critic

    td = make_batch(37)
    plain = fm.MAPPOLoss(make_actor(), make_critic(), entropy_bonus=False)
    grouped = fm.MAPPOLoss(make_actor(), make_critic(), entropy_bonus=False, advantage_stats_group=one_rank_group)
    for loss in (plain, grouped):
        loss.set_keys(**KEYS)
    a, b = plain(td), grouped(td)
    for key in a.keys():
        assert torch.equal(a[key], b[key]), key  # a one-rank group runs no collective: the same bits
    assert grouped.advantage_stats_group is one_rank_group
    assert list(grouped.state_dict()) == list(plain.state_dict())
    grouped.load_state_dict(plain.state_dict())


def test_bad_process_group_is_named():
    log_prob = torch.zeros(4, 3)
    with pytest.raises(TypeError, match="process_group must be a torch.distributed.ProcessGroup"):
        ppo_clip_loss(log_prob, log_prob, torch.zeros(4, 3, 1), normalize_advantage=True, process_group="world")
    from ppo_cases import make_actor, make_critic

    with pytest.raises(TypeError, match="process_group must be"):
        fm.MAPPOLoss(make_actor(), make_critic(), advantage_stats_group=0)


def test_torchrl_fallback_refuses_global_statistics(one_rank_group):
    # delay_actor=True runs TorchRL's forward, which cannot use every rank's statistics.
    from ppo_cases import KEYS, make_actor, make_batch, make_critic

    loss = fm.ClipPPOLoss(make_actor(), make_critic(), delay_actor=True, normalize_advantage=True,
                          advantage_stats_group=one_rank_group)
    loss.set_keys(**KEYS)
    with pytest.raises(ValueError, match="advantage_stats_group is set, but this call runs TorchRL's own forward"):
        loss(make_batch(8))


def test_private_torch_modules_imported_only_in_compat():
    # torch.distributed._functional_collectives (and any torch module whose path has a private
    # part) is imported by fastmarl/_compat.py only.
    import ast

    offenders = []
    for path in (ROOT / "fastmarl").rglob("*.py"):
        if path.name == "_compat.py" and path.parent.name == "fastmarl":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
                     if isinstance(node, ast.ImportFrom) else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {name}" for name in names
                          if name.split(".")[0] == "torch" and any(part.startswith("_") and not part.startswith("__")
                                                                   for part in name.split(".")[1:])]
    assert not offenders, offenders


# --------------------------------------------------------------------------- fastmarl train


TINY = ["--frames-per-batch", "40", "--max-steps", "20", "--epochs", "2", "--minibatch", "20", "--num-cells", "8",
        "--no-progress"]
TIMING = ("seconds", "fps")


def _run(argv, timeout=120, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, **kwargs)


def _fastmarl(*args) -> list[str]:
    return [sys.executable, "-m", "fastmarl", *args]


def _torchrun(*args, nproc=2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]


def _metrics(folder: Path) -> list[dict]:
    rows = json.loads((folder / "metrics.json").read_text())
    return [{k: v for k, v in row.items() if not k.startswith("time_") and k not in TIMING} for row in rows]


def _params(folder: Path) -> dict:
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    return {f"{part}.{k}": v for part, sd in state["trainer"].items() if isinstance(sd, dict)
            for k, v in sd.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    """``fastmarl train --nproc 2``, MAPPO with per-agent standardisation over both ranks, 2 iterations."""
    folder = tmp_path_factory.mktemp("dist") / "A"
    result = _run(_fastmarl("train", "--nproc", "2", "--iters", "2", "--normalize-advantage", *TINY, "--out",
                            str(folder)))
    return folder, result


@pytest.mark.slow_cli
def test_train_on_two_ranks_writes_the_run_folder(two_rank_run):
    folder, result = two_rank_run
    assert result.returncode == 0, result.stderr[-3000:]
    print("\n" + result.stdout)
    assert "distributed: 2 rank(s), gloo" in result.stdout
    assert "all ranks: 80 frames per iteration, 40 samples per gradient step" in result.stdout
    assert "statistics of every rank's minibatch" in result.stdout
    assert result.stdout.count("mean episode reward per iteration") == 1  # rank 0 prints, alone
    for name in ("metrics.json", "metrics.csv", "reward.png", "config.json", "phases.txt", "checkpoint.pt"):
        assert (folder / name).is_file(), name
    rows = _metrics(folder)
    assert [row["frames"] for row in rows] == [80, 80]
    assert all(row["episodes"] == 4 for row in rows)  # 2 environments a rank, one episode each
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert state["world_size"] == 2 and set(state["rank_states"]) == {1}
    assert not torch.equal(state["rank_states"][1]["rng"]["cpu"], state["rng"]["cpu"])


@pytest.mark.slow_cli
def test_ranks_end_cleanly_with_warnings_shown(tmp_path):
    # python -m fastmarl under torchrun skips interpreter finalisation (a finished rank once
    # aborted there in CI); its atexit handlers still run: skipping them left multiprocessing's
    # semaphores behind ("resource_tracker: There appear to be 6 leaked semaphore objects").
    # Warnings on here (the other tests silence them).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    result = subprocess.run(_fastmarl("train", "--nproc", "2", "--iters", "1", *TINY, "--out", str(tmp_path / "run")),
                            capture_output=True, text=True, timeout=120, env={**env, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "leaked semaphore" not in result.stderr and "terminate called" not in result.stderr, result.stderr[-3000:]
    assert result.stdout.count("mean episode reward per iteration") == 1 and "total" in result.stdout


@pytest.mark.slow_cli
def test_train_on_two_ranks_resumes_exactly_and_repeats(two_rank_run, tmp_path):
    """Same seed, 1 iteration, then ``torchrun ... --resume`` to 2: the same metrics and parameters
    as the 2-iteration run (so two runs with the same seed agree too)."""
    folder_a, result_a = two_rank_run
    assert result_a.returncode == 0, result_a.stderr[-3000:]
    folder_b = tmp_path / "B"
    first = _run(_fastmarl("train", "--nproc", "2", "--iters", "1", "--normalize-advantage", *TINY, "--out",
                           str(folder_b)))
    assert first.returncode == 0, first.stderr[-3000:]
    assert _metrics(folder_b) == _metrics(folder_a)[:1]
    resumed = _run(_torchrun("-m", "fastmarl", "train", "--resume", str(folder_b), "--resume-iters", "2",
                             "--no-progress"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _metrics(folder_b) == _metrics(folder_a)
    a, b = _params(folder_a), _params(folder_b)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # A 2-rank checkpoint resumes on 2 ranks only, refused before anything runs.
    refused = _run(_fastmarl("train", "--resume", str(folder_b), "--resume-iters", "3"))
    assert refused.returncode == 2 and "trained on 2 rank(s), not 1" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.slow_cli
def test_qmix_on_two_ranks_resumes_exactly(tmp_path):
    """QMIX under torchrun: each rank's own replay buffer (in the checkpoint), gradients averaged."""
    qmix = ["--algo", "qmix", "--qmix-updates-per-iter", "3", "--buffer-size", "400", *TINY]
    runs = {}
    for name, iters in (("A", "2"), ("B", "1")):
        runs[name] = tmp_path / name
        result = _run(_fastmarl("train", "--nproc", "2", "--iters", iters, *qmix, "--out", str(runs[name])))
        assert result.returncode == 0, result.stderr[-3000:]
    resumed = _run(_fastmarl("train", "--nproc", "2", "--resume", str(runs["B"]), "--resume-iters", "2",
                             "--no-progress"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _metrics(runs["A"]) == _metrics(runs["B"])
    a, b = _params(runs["A"]), _params(runs["B"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    state = torch.load(runs["A"] / "checkpoint.pt", weights_only=True)
    ours, theirs = state["trainer"]["buffer"], state["rank_states"][1]["trainer"]["buffer"]
    assert ours["length"] == theirs["length"] == 80  # each rank's own 2 x 40 frames
    assert not torch.equal(ours["rows"]["state"], theirs["rows"]["state"])


FAILING_RANK = """
import sys, time
from fastmarl.training import ppo

step = ppo.PPOTrainer.step

def failing_step(self):
    if self.dist.rank == 1 and getattr(self, "calls", 0) == 1:
        {action}
    self.calls = getattr(self, "calls", 0) + 1
    return step(self)

ppo.PPOTrainer.step = failing_step
from fastmarl.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow_cli
@pytest.mark.parametrize("action,expected", [
    ('raise RuntimeError("injected failure")', "rank 1 of 2 failed in iteration 2: RuntimeError: injected failure"),
    ("time.sleep(3600)", "hung for more than --dist-timeout 5 s"),
])
def test_a_failing_rank_ends_the_run_with_its_name(tmp_path, action, expected):
    """Rank 1 raises (or hangs) in its second iteration: torchrun exits non-zero within the
    timeout, with the failing rank named (the others report the broken collective)."""
    script = tmp_path / "failing_rank.py"
    script.write_text(FAILING_RANK.format(action=action))
    start = time.monotonic()
    result = _run(_torchrun(str(script), "train", "--iters", "3", *TINY, "--dist-timeout", "5", "--out",
                            str(tmp_path / "run")), timeout=90)
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr[-3000:]
    assert elapsed < 60
    assert not (tmp_path / "run" / "metrics.json").is_file() or len(_metrics(tmp_path / "run")) == 1


def test_nproc_passes_every_option_to_the_ranks_and_summarises_a_failure(monkeypatch, tmp_path, capsys):
    """``fastmarl train --nproc 2 ...`` runs torchrun's launcher with the same options (less
    --nproc) and turns its ChildFailedError into one line (no launcher traceback)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    import torch.distributed.run as launcher
    from fastmarl import cli

    argv = ["train", "--nproc", "2", "--lr", "0.0003", "--gamma", "0.95", "--normalize-advantage", "--no-save-buffer",
            "--out", str(tmp_path / "run"), "--dist-timeout", "7.5", "--no-progress", *TINY[:-1]]
    seen = {}

    def fake_run(args):
        seen["args"] = args
        failure = ProcessFailure(local_rank=1, pid=1, exitcode=1, error_file=str(tmp_path / "none.json"))
        raise ChildFailedError("fastmarl", {1: failure})

    monkeypatch.setattr(launcher, "run", fake_run)
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "fastmarl train: error: 1 of 2 rank(s) failed, first rank 1 (exit status 1)" in err
    assert "Traceback" not in err
    args = seen["args"]
    assert args.nproc_per_node == "2" and args.standalone and args.module
    rank_args = cli.build_parser().parse_args(args.training_script_args)
    expected = cli.build_parser().parse_args(argv[:1] + argv[3:])  # less "--nproc 2"
    assert vars(rank_args) == {**vars(expected), "func": rank_args.func}
    assert rank_args.nproc is None and rank_args.dist_timeout == 7.5


# --------------------------------------------------------------------------- CUDA


@pytest.mark.skipif(not torch.cuda.is_available() or not dist.is_nccl_available(),
                    reason="needs CUDA with NCCL; the gloo tests above are its CPU twins")
@pytest.mark.slow_cli
def test_nccl_smoke_run_world_size_one(tmp_path):
    """The same code on NCCL: one rank on one GPU (torchrun), a tiny MAPPO run with the global
    statistics and the gradient all-reduce in the compiled step."""
    result = _run(_fastmarl("train", "--nproc", "1", "--device", "cuda", "--iters", "2", "--normalize-advantage",
                            "--compile", *TINY, "--out", str(tmp_path / "run")), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "distributed: 1 rank(s), nccl" in result.stdout
    assert len(_metrics(tmp_path / "run")) == 2
