"""``FastExperiment``: BenchMARL's ``Experiment`` whose minibatch update can run as one
:class:`fastmarl.UpdateStep`.

With every algorithm config except a fastmarl one whose ``compile_update`` is ``True``,
:class:`FastExperiment` is BenchMARL's ``Experiment`` unchanged. With it, ``_optimizer_loop``
(BenchMARL's per-minibatch update, the one method overridden) runs

    zero-grad → loss forward → backward of the loss entries the optimizers step on →
    BenchMARL's gradient clipping, per optimizer → each optimizer's step → target update

as one ``UpdateStep(..., compile=True)``. BenchMARL's optimizers (one Adam per loss entry:
``loss_objective`` for the actor, ``loss_critic`` for the critic in MAPPO/IPPO) stay BenchMARL's
objects, behind :class:`PerLossOptimizers`; what is logged per step is what BenchMARL logs (the
loss entries and ``grad_norm_<loss>``, kept as tensors: no host sync per step).
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from benchmarl.experiment import Experiment
from tensordict import TensorDictBase

__all__ = ["FastExperiment", "PerLossOptimizers", "check_compile_update"]


def _update_step_class():
    """``fastmarl.UpdateStep``, imported when ``compile_update`` asks for it (it pulls in
    ``torch._dynamo``, which a plain BenchMARL run does not need)."""
    from fastmarl import UpdateStep

    return UpdateStep


def check_compile_update(experiment) -> None:
    """Raise early, while the experiment is set up, if ``compile_update=True`` cannot be honoured."""
    if not isinstance(experiment, FastExperiment):
        raise ValueError(
            "compile_update=True needs fastmarl.integrations.benchmarl.FastExperiment in place of "
            f"benchmarl's Experiment (got {type(experiment).__name__}): BenchMARL's Experiment "
            "runs its own update loop"
        )
    _update_step_class()


def _clip_like_benchmarl(params, clip_grad_norm: bool, clip_grad_val: Optional[float]) -> torch.Tensor:
    # benchmarl.experiment.Experiment._grad_clip (BenchMARL 1.5.2), returning the norm as a
    # tensor instead of float(total_norm), which syncs with the device.
    if clip_grad_norm and clip_grad_val is not None:
        return torch.nn.utils.clip_grad_norm_(params, clip_grad_val)
    norms = [torch.linalg.vector_norm(p.grad, 2.0) for p in params if p.grad is not None]
    total_norm = torch.linalg.vector_norm(torch.stack(norms), 2.0)
    if clip_grad_val is not None:
        torch.nn.utils.clip_grad_value_(params, clip_grad_val)
    return total_norm


class PerLossOptimizers:
    """One group's BenchMARL optimizers (``{loss name: Adam}``) behind the one-optimizer
    interface ``UpdateStep`` drives (``zero_grad``, ``step``, ``param_groups``, ``state_dict``).

    BenchMARL backpropagates each loss entry into its own optimizer and clips each optimizer's
    gradients on their own. The optimizers' parameters are disjoint and each loss entry depends
    only on its own optimizer's parameters (PPO: the actor loss on the actor, with the advantage
    computed beforehand; the critic loss on the critic), so one backward of the entries' sum
    gives BenchMARL's gradients; :meth:`step` then clips and steps optimizer by optimizer as
    BenchMARL does and keeps each gradient norm in :attr:`grad_norms`.
    """

    def __init__(self, optimizers: Dict[str, torch.optim.Optimizer], clip_grad_norm: bool,
                 clip_grad_val: Optional[float]):
        self.optimizers = dict(optimizers)
        self.clip_grad_norm = clip_grad_norm
        self.clip_grad_val = clip_grad_val
        self.grad_norms: Dict[str, torch.Tensor] = {}

    @property
    def param_groups(self):
        return [group for opt in self.optimizers.values() for group in opt.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        if closure is not None:
            raise ValueError("PerLossOptimizers.step takes no closure")
        for name, opt in self.optimizers.items():
            params = [p for group in opt.param_groups for p in group["params"]]
            self.grad_norms[name] = _clip_like_benchmarl(params, self.clip_grad_norm, self.clip_grad_val)
            opt.step()

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state_dict: dict) -> None:
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state_dict[name])


class FastExperiment(Experiment):
    """BenchMARL's :class:`~benchmarl.experiment.Experiment` (same arguments); with a fastmarl
    algorithm config whose ``compile_update`` is ``True``, each minibatch update runs as one
    compiled :class:`fastmarl.UpdateStep` (see :mod:`fastmarl.integrations.benchmarl.experiment`)."""

    def _update_step(self, group: str):
        steps = self.__dict__.setdefault("_fastmarl_update_steps", {})
        if group not in steps:
            optimizer = PerLossOptimizers(
                self.optimizers[group], self.config.clip_grad_norm, self.config.clip_grad_val
            )
            updater = self.target_updaters[group]
            step = _update_step_class()(
                self.losses[group],
                optimizer,
                loss_keys=list(self.algorithm.update_loss_keys),
                max_grad_norm=None,  # BenchMARL clips per optimizer: PerLossOptimizers.step
                compile=True,
                after_step=updater.step if updater is not None else None,
            )
            steps[group] = (step, optimizer)
        return steps[group]

    def _optimizer_loop(self, group: str) -> TensorDictBase:
        if not getattr(self.algorithm, "compile_update", False):
            return super()._optimizer_loop(group)
        # BenchMARL 1.5.2's Experiment._optimizer_loop with the update as one UpdateStep call.
        step, optimizer = self._update_step(group)
        subdata = self.replay_buffers[group].sample().to(self.config.train_device)
        training_td = step(subdata)
        for loss_name, grad_norm in optimizer.grad_norms.items():
            training_td.set(f"grad_norm_{loss_name}", grad_norm.detach())
        self.replay_buffers[group].update_tensordict_priority(subdata)
        callback_loss = self._on_train_step(subdata, group)
        if callback_loss is not None:
            training_td.update(callback_loss)
        return training_td
