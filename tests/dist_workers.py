"""What each rank runs in tests/test_distributed.py (spawned processes import this module).

``entry`` joins a gloo group on localhost, runs one of the functions below and saves what it
returns to ``<out>/rank<r>.pt``; the test process compares the ranks' results with one process
on the concatenated data, which it computes with the same functions (``group=None``).
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from ppo_cases import KEYS, make_actor, make_batch, make_critic
from tensordict import TensorDict

import fastmarl.objectives as fm
from fastmarl import UpdateStep
from fastmarl._compat import all_gather_autograd
from fastmarl.functional import ppo_clip_loss
from fastmarl.ops.ppo.collective import merge_moments, shard_moments, standardize_across

SHARD_ROWS = (5, 11)  # unequal shards: counts travel with the statistics


def entry(rank: int, world: int, port: int, name: str, out: str, kwargs: dict) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        result = globals()[name](rank, world, dist.group.WORLD, **kwargs)
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- statistics


def advantages(dtype=torch.float64, rows=sum(SHARD_ROWS), agents=3) -> torch.Tensor:
    """``[N, A, 1]`` advantages whose per-agent means (1000, -3, 0.5) dwarf their stds: a
    sum-of-squares merge would lose the variance's digits in float32, Chan's does not."""
    g = torch.Generator().manual_seed(3)
    scale = torch.tensor([2.0, 0.01, 1.0], dtype=dtype)[:agents].reshape(1, agents, 1)
    offset = torch.tensor([1000.0, -3.0, 0.5], dtype=dtype)[:agents].reshape(1, agents, 1)
    return torch.randn(rows, agents, 1, generator=g, dtype=dtype) * scale + offset


def shard(x: torch.Tensor, rank: int, rows=SHARD_ROWS) -> torch.Tensor:
    start = sum(rows[:rank])
    return x[start:start + rows[rank]]


def policy_inputs(rows: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(4)
    log_prob = torch.randn(rows, 3, generator=g, dtype=dtype)
    return log_prob, log_prob + 0.3 * torch.randn(rows, 3, generator=g, dtype=dtype)


def surrogate(log_prob, prev_log_prob, advantage, group):
    return ppo_clip_loss(log_prob, prev_log_prob, advantage, normalize_advantage=True,
                         normalize_advantage_exclude_dims=(-2,), process_group=group)["loss_objective"]


def surrogate_and_grads(log_prob, prev_log_prob, advantage, group, fn=surrogate):
    log_prob = log_prob.clone().requires_grad_()
    advantage = advantage.clone().requires_grad_()
    loss = fn(log_prob, prev_log_prob, advantage, group)
    grad_log_prob, grad_advantage = torch.autograd.grad(loss, [log_prob, advantage])
    return loss.detach(), grad_log_prob, grad_advantage


def statistics(rank, world, group, dtype=torch.float64, compile_check=True):
    """Merged per-agent (count, mean, std) and the standardised shard over unequal shards; the
    surrogate's value and gradients (log-prob and advantage) over equal shards, eager and
    compiled."""
    full = advantages(dtype)
    mine = shard(full, rank)
    moments = all_gather_autograd(shard_moments(mine, (0, 2)), group)
    n, mean, m2 = merge_moments(moments.view(world, 3, 1, 3, 1))
    out = {"count": n, "mean": mean, "std": (m2 / (n - 1)).sqrt(), "standardized": standardize_across(mine, (1,), group)}
    rows = (8, 8)
    log_prob, prev = policy_inputs(sum(rows), dtype)
    equal = [shard(x, rank, rows) for x in (log_prob, prev, advantages(dtype, sum(rows)))]
    out["eager"] = surrogate_and_grads(*equal, group)
    if compile_check:
        compiled = torch.compile(surrogate, fullgraph=True)
        out["compiled"] = surrogate_and_grads(*equal, group, fn=compiled)
    return out


# --------------------------------------------------------------------------- one update


def minibatches(steps: int, rows: int, dtype=torch.float32) -> list[TensorDict]:
    """``steps`` minibatches of ``2 * rows`` samples: rows ``[0, rows)`` are rank 0's shard,
    the rest rank 1's, whose advantages are shifted and scaled (3A + 2) so that the two
    shards' own statistics differ from the union's."""
    out = []
    for step in range(steps):
        td = make_batch(2 * rows, seed=10 + step)
        adv = td.get("advantage").clone()
        adv[rows:] = 3 * adv[rows:] + 2
        td.set("advantage", adv)
        out.append(td.apply(lambda x: x.to(dtype) if x.is_floating_point() else x))
    return out


def ppo_updates(batches, group=None, global_stats=True, dtype=torch.float32, lr=1e-3):
    """``MAPPOLoss`` (per-agent standardisation, no entropy: TanhNormal's is Monte-Carlo) and
    ``UpdateStep`` (Adam, clipping at 1.0) over ``batches``; ``group``: gradients averaged over
    its ranks, and with ``global_stats`` the advantage statistics too. Returns the parameters
    and each step's loss entries."""
    actor, critic = make_actor(), make_critic()
    loss = fm.MAPPOLoss(actor, critic, entropy_bonus=False,
                        advantage_stats_group=group if global_stats else None)
    loss.set_keys(**KEYS)
    loss = loss.to(dtype)
    step = UpdateStep(loss, torch.optim.Adam(loss.parameters(), lr=lr), max_grad_norm=1.0, process_group=group)
    metrics = [step(td) for td in batches]
    params = {name: p.detach().clone() for name, p in loss.named_parameters()}
    return {"params": params, "metrics": [m.to_dict() for m in metrics]}


def updates(rank, world, group, steps=3, rows=16):
    def mine(dtype):
        return [td[rank * rows:(rank + 1) * rows] for td in minibatches(steps, rows, dtype)]

    return {
        "global": ppo_updates(mine(torch.float32), group, True),
        "local": ppo_updates(mine(torch.float32), group, False),
        "global64": ppo_updates(mine(torch.float64), group, True, torch.float64),
    }


# --------------------------------------------------------------------------- compiled step


class Regression(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    def forward(self, td):
        return TensorDict({"loss": (self.net(td["x"]) - td["y"]).square().mean()}, [])


def regression_batches(steps=3, rows=8):
    g = torch.Generator().manual_seed(5)
    return [TensorDict({"x": torch.randn(2 * rows, 4, generator=g), "y": torch.randn(2 * rows, 1, generator=g)},
                       [2 * rows]) for _ in range(steps)]


def regression_updates(batches, group=None, compile=False):
    model = Regression()
    step = UpdateStep(model, torch.optim.Adam(model.parameters(), lr=1e-2, foreach=True), max_grad_norm=0.5,
                      compile=compile, process_group=group)
    for td in batches:
        step(td)
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def compiled_updates(rank, world, group, rows=8):
    from torch._dynamo.utils import counters

    batches = [td[rank * rows:(rank + 1) * rows] for td in regression_batches(rows=rows)]
    counters.clear()
    compiled = regression_updates(batches, group, compile=True)
    breaks = sum(counters["graph_break"].values())
    return {"eager": regression_updates(batches, group), "compiled": compiled, "graph_breaks": breaks}
