"""``fastmarl train`` under ``torchrun``: data-parallel MAPPO / IPPO / QMIX, one process per rank.

``torchrun --nproc-per-node N -m fastmarl train ...`` (or ``fastmarl train --nproc N ...``, which
launches exactly that) starts N copies of the command; each finds torchrun's environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``) and joins one process group:
gloo on the CPU, NCCL on CUDA (rank r on ``cuda:LOCAL_RANK``).

What each rank does, and what is shared:

- **Per rank** (``--frames-per-batch`` and ``--minibatch`` keep their single-process meaning on
  every rank): its own VMAS environments, seeded ``--seed + rank``; its own torch random stream
  (rank 0 keeps the single-process one, so a one-rank run is the single-process run; rank r > 0
  draws from ``SeedSequence([seed, r])``); collection, GAE and the PPO sampler's permutation or
  QMIX's replay buffer. An iteration collects N × frames-per-batch frames in all, and each
  gradient step sees N × minibatch samples (each rank's minibatch, the same number of steps
  per epoch on every rank).
- **Shared**: the networks (built from ``--seed`` on every rank, then broadcast from rank 0, as
  DDP does), the gradients (averaged over the ranks before clipping, one all-reduce per step:
  :func:`fastmarl.distributed.average_gradients`; why not DDP: that module's docstring), hence
  the optimizer states; with ``--normalize-advantage``, the per-agent advantage statistics
  (one all-gather per loss call: ``MAPPOLoss(advantage_stats_group=...)``); the metrics (mean
  episode reward over every rank's episodes, losses averaged over the ranks, frames and frames
  per second of all ranks together).
- **Rank 0** writes the run folder (metrics, plot, phases, ``checkpoint.pt``, each atomically)
  and prints; the checkpoint holds the shared state once and every rank's own random state and
  sampler or replay buffer (gathered to rank 0), so ``--resume`` under torchrun with the same
  number of ranks continues exactly as single-process resume does.
- **Failures**: a rank that raises prints ``fastmarl train: error: rank R of N failed in
  iteration I: ...`` and exits with status 1; torchrun then stops the other ranks and exits
  non-zero, naming the failed rank in its summary. A rank that hangs makes the others' next
  collective fail after ``--dist-timeout`` seconds (default 300) instead of waiting forever.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import traceback
from datetime import timedelta

import torch

from fastmarl.training.config import RunError, TrainConfig

__all__ = ["DistContext", "init_process_group", "rank_seed", "train_rank",
           "check_config", "describe", "DEFAULT_TIMEOUT_S"]

# Seconds a collective waits for the other ranks before failing. Longer than any wait of a
# healthy run between two collectives: the ranks meet at every gradient step, and the longest
# gap is one rank's collection or first compile against another's (the compiled PPO step took
# 45-49 s to compile on the CPU machine, on every rank at once).
DEFAULT_TIMEOUT_S = 300.0
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def rank_seed(seed: int, rank: int) -> int:
    """The torch seed of ``rank``: ``seed`` itself for rank 0 (a one-rank run is the single-process
    run), otherwise a well-mixed derivation of ``(seed, rank)`` that collides with no other rank's."""
    if rank == 0:
        return seed
    import numpy as np

    return int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


@dataclasses.dataclass
class DistContext:
    """This process's place in the run: its rank, the group, the device collectives use."""

    rank: int
    world_size: int
    local_rank: int
    group: object  # torch.distributed.ProcessGroup
    backend: str
    timeout_s: float

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def collective_device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """The sums over the ranks of ``values`` (float64; a host sync: once an iteration)."""
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self.collective_device)
        dist.all_reduce(tensor, group=self.group)
        return tensor.cpu().tolist()

    def gather_to_main(self, obj) -> list | None:
        """Every rank's ``obj`` (picklable) on rank 0, in rank order; ``None`` on the others."""
        import torch.distributed as dist

        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0, group=self.group)
        return out

    def broadcast_from_main(self, obj):
        """Rank 0's ``obj`` on every rank."""
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]


def init_process_group(device: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> DistContext:
    """Join torchrun's process group: gloo for ``--device cpu``, NCCL (``cuda:LOCAL_RANK``) for CUDA,
    with ``timeout_s`` on every collective."""
    import torch.distributed as dist

    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise RunError(f"a distributed run needs torchrun's environment variables (missing: {', '.join(missing)}): "
                       "launch with torchrun --nproc-per-node N -m fastmarl train ... or fastmarl train --nproc N")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    kwargs = {}
    if torch.device(device).type == "cuda":
        if device != "cuda":
            raise RunError(f"--device {device}: under torchrun give --device cuda; rank r runs on cuda:LOCAL_RANK")
        if local_rank >= torch.cuda.device_count():
            raise RunError(f"rank {rank} has LOCAL_RANK {local_rank}, but this node has "
                           f"{torch.cuda.device_count()} CUDA device(s): use --nproc-per-node <= the GPU count")
        torch.cuda.set_device(local_rank)
        backend = "nccl"
        kwargs["device_id"] = torch.device("cuda", local_rank)
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s), **kwargs)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, group=dist.group.WORLD,
                       backend=backend, timeout_s=timeout_s)


def check_config(config: TrainConfig, world_size: int) -> None:
    """Options that cannot run data-parallel on ``world_size`` ranks: ``RunError`` before any work."""
    if config.cudagraph:
        raise RunError("--cudagraph is not supported under torchrun: capturing the gradient all-reduce in a "
                       "CUDA graph has not been tested (use --compile)")
    if config.normalize_advantage and config.backend != "fastmarl" and world_size > 1:
        raise RunError("--normalize-advantage with --backend torchrl under torchrun would standardise each rank's "
                       "shard with its own statistics (TorchRL has no cross-rank statistics); use --backend "
                       "fastmarl, whose loss standardises with every rank's")


def describe(config: TrainConfig, ctx: DistContext, path) -> str:
    """What a distributed run does, printed by rank 0 at the start."""
    n = ctx.world_size
    lines = [
        f"distributed: {n} rank(s), {ctx.backend}, {'cuda:LOCAL_RANK' if ctx.backend == 'nccl' else 'cpu'}; "
        f"rank r: VMAS seed {config.seed} + r, its own collection, GAE and "
        + ("replay buffer" if config.algo == "qmix" else "minibatch sampler"),
        f"  per rank (--frames-per-batch, --minibatch): {config.frames_per_batch} frames per iteration, "
        f"minibatch {config.minibatch}",
        f"  all ranks: {n * config.frames_per_batch} frames per iteration, {n * config.minibatch} samples per "
        f"gradient step (gradients averaged over the ranks, one all-reduce per step)",
    ]
    if config.algo != "qmix":
        lines.append("  advantage: " + (
            "standardised per agent with the statistics of every rank's minibatch (one all-gather per loss call)"
            if config.normalize_advantage else "not standardised (the tutorial's; --normalize-advantage to turn on)"))
    lines.append(f"  rank 0 writes the run folder {path}; collectives time out after {ctx.timeout_s:g} s")
    return "\n".join(lines)


def _is_collective_failure(err: BaseException) -> bool:
    import torch.distributed as dist

    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        marker in text for marker in ("Connection closed by peer", "Connection reset by peer", "Timed out",
                                      "timed out", "[gloo", "NCCL", "ProcessGroup"))


def train_rank(config: TrainConfig | None, *, out=None, resume=None, iters=None, progress: bool = True,
               timeout_s: float = DEFAULT_TIMEOUT_S, on_start=None) -> tuple[int, dict | None]:
    """One rank of a torchrun launch: ``(exit status, train()'s result on rank 0 or None)``.

    ``RunError`` (bad options, a checkpoint that cannot resume) is printed by rank 0 and gives
    status 2 on every rank (each rank checks the same things); any other error is printed by
    the rank it happened on, naming it, with status 1. ``on_start(ctx, run)`` is called on
    rank 0 once the run is open (the command line prints what the run does).
    """
    import torch.distributed as dist

    from fastmarl.training.driver import Run, default_run_dir, run_loop

    ctx = None
    run = None
    try:
        if config is not None and config.device != "cpu":
            device = config.device
        elif resume is not None:
            from fastmarl.training.driver import open_checkpoint

            device = open_checkpoint(resume, iters, int(os.environ.get("WORLD_SIZE", "1")))[2].device
        else:
            device = "cpu"
        if config is not None:
            check_config(config, int(os.environ.get("WORLD_SIZE", "1")))
        ctx = init_process_group(device, timeout_s)
        if config is not None and resume is None and out is None:
            out = ctx.broadcast_from_main(str(default_run_dir(config)))
        run = Run.open(config, out=out, resume=resume, iters=iters, dist=ctx)
        check_config(run.config, ctx.world_size)  # a resumed run's configuration
        if ctx.is_main and on_start is not None:
            on_start(ctx, run)
        result = run_loop(run, progress=progress and ctx.is_main)
        # Every rank past its last collective before any tears the group down (rank 0 still
        # writes the run folder while the others are done): no rank closes its gloo pairs while
        # a peer may still use them.
        dist.barrier(group=ctx.group)
        return 0, result if ctx.is_main else None
    except RunError as err:
        if (ctx.is_main if ctx is not None else os.environ.get("RANK", "0") == "0"):
            print(f"fastmarl train: error: {err}", file=sys.stderr)
        return 2, None
    except BaseException as err:  # noqa: BLE001  (reported with the rank, then a non-zero exit)
        from fastmarl.training.driver import one_line

        rank = f"rank {ctx.rank} of {ctx.world_size}" if ctx is not None else f"rank {os.environ.get('RANK', '?')}"
        where = (" while starting" if run is None else " while finishing" if run.done
                 else f" in iteration {len(run.rows) + 1}")
        if ctx is not None and _is_collective_failure(err):
            print(f"fastmarl train: error: {rank}: a collective with the other ranks failed{where} "
                  f"({one_line(err)}): another rank failed, was killed or hung for more than --dist-timeout "
                  f"{ctx.timeout_s:g} s; its own error names it", file=sys.stderr)
        else:
            traceback.print_exc()
            print(f"fastmarl train: error: {rank} failed{where}: {one_line(err)}", file=sys.stderr)
        return (130 if isinstance(err, KeyboardInterrupt) else 1), None
    finally:
        if dist.is_available() and dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001  (a peer is gone: nothing left to tear down cleanly)
                pass
