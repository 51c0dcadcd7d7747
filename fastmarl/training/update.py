"""One PPO update step as a function, eager, compiled or captured in a CUDA graph.

``ppo_update_step`` is what the trainers do per minibatch (loss forward, backward, gradient
clipping, Adam) as a single function of the minibatch TensorDict, returning detached losses:
the unit that ``torch.compile`` and ``tensordict.nn.CudaGraphModule`` capture whole.
"""

from __future__ import annotations

import torch


def ppo_update_step(loss, optim, max_grad_norm: float):
    params = [p for p in loss.parameters() if p.requires_grad]

    def step(subdata):
        # Gradients are zeroed in place (not set to None) so that captured buffers stay put.
        optim.zero_grad(set_to_none=False)
        out = loss(subdata)
        total = out["loss_objective"] + out["loss_critic"] + out["loss_entropy"]
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optim.step()
        return total.detach()

    return step


def captured(step, mode: str, warmup: int = 2):
    """``step`` as is (``eager``), under ``torch.compile`` (``compiled``), or captured in a
    CUDA graph (``cudagraph``: ``tensordict.nn.CudaGraphModule``, which runs ``warmup`` steps
    eagerly, then captures one and replays it). A CUDA graph needs ``Adam(capturable=True)``."""
    if mode == "eager":
        return step
    if mode == "compiled":
        return torch.compile(step)
    if mode == "cudagraph":
        from tensordict.nn import CudaGraphModule

        return CudaGraphModule(step, warmup=warmup, in_keys=[])
    raise ValueError(f"mode must be eager, compiled or cudagraph, got {mode!r}")
