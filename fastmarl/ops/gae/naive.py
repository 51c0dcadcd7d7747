"""GAE as TorchRL 0.14.1 computes it: the readable statement, the tests' float64 oracle and the
benchmarks' baseline. Nothing at run time imports this module.

Conventions (TorchRL's ``generalized_advantage_estimate``)::

    delta_t = r_t + (γ_t * (1 - terminated_t)) * V(s'_t) - V(s_t)     terminated cuts the bootstrap
    A_t     = delta_t + (λ_t * γ_t * (1 - done_t)) * A_{t+1}         done cuts the λ-trace
    G_t     = A_t + V(s_t)

with ``A_T = 0``. A row may hold several trajectories: each ``done`` starts a new one.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["gae"]


def gae(
    gamma: float | Tensor,
    lmbda: float | Tensor,
    state_value: Tensor,
    next_state_value: Tensor,
    reward: Tensor,
    done: Tensor,
    terminated: Tensor | None = None,
    *,
    time_dim: int = -2,
) -> tuple[Tensor, Tensor]:
    """TorchRL's loop GAE, op for op, on ``[*B, T, *F]`` tensors with time at ``time_dim``.

    Inputs must share one shape (γ/λ may be scalars or tensors broadcastable to it). Returns
    ``(advantage, value_target)``. Differentiable with respect to every floating input.
    """
    if terminated is None:
        terminated = done.clone()
    time_dim = time_dim % state_value.ndim

    def time_first(x):
        return x.movedim(time_dim, 0) if isinstance(x, Tensor) and x.ndim == state_value.ndim else x

    not_done = done.logical_not().int()
    not_terminated = terminated.logical_not().int()
    g_not_terminated = gamma * not_terminated
    delta = time_first(reward + (g_not_terminated * next_state_value) - state_value)
    discount = time_first(lmbda * gamma * not_done)
    steps = []
    prev_advantage = 0
    for t in reversed(range(delta.shape[0])):
        prev_advantage = delta[t] + (prev_advantage * discount[t])
        steps.append(prev_advantage)
    advantage = torch.stack(steps[::-1], 0).movedim(0, time_dim).to(next_state_value.dtype)
    return advantage, advantage + state_value
