"""PPO's clipped surrogate and critic loss: ``naive.py`` (TorchRL's math, the oracle), ``cpu.py``
(torch kernels), ``triton.py`` (launchers of ``fastmarl/kernels/ppo.py``), ``op.py``
(registration, autograd and :func:`~fastmarl.ops.ppo.op.select_path`, the one path policy)."""

from fastmarl.ops.ppo.op import ppo_clip, ppo_critic, select_path

__all__ = ["ppo_clip", "ppo_critic", "select_path"]
