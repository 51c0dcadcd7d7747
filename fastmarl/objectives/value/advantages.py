"""Drop-in ``GAE`` and ``MultiAgentGAE``: TorchRL's estimators with fastmarl's scan inside.

They subclass TorchRL's classes, so constructor, keys (``set_keys``), ``in_keys``/``out_keys``,
value-network calls (``shifted``, ``params``/``target_params``, vmap, chunking), ``average_gae``,
``group_key``, ``skip_existing``, ``auto_reset_env`` and ``MultiAgentGAE``'s ``agent_dim`` and
team-signal broadcasting are TorchRL's own code. Only the advantage computation changes: one
``torch.ops.fastmarl.gae`` call instead of TorchRL's loop over time (or its truncated conv1d
when ``vectorized=True``, which is approximate and breaks ``torch.compile(fullgraph=True)``).

Neither class registers itself in TorchRL's value-estimator registry: a TorchRL loss built in the
same process keeps TorchRL's estimators.
"""

from __future__ import annotations

import functools
import inspect
from contextlib import nullcontext

import torch
from tensordict import TensorDictBase
from tensordict.nn import dispatch
from torch import Tensor
from torchrl.objectives.utils import hold_out_net
from torchrl.objectives.value.advantages import GAE as _TorchRLGAE
from torchrl.objectives.value.advantages import MultiAgentGAE as _TorchRLMultiAgentGAE

from fastmarl import _compat
from fastmarl.functional import generalized_advantage_estimate

__all__ = ["GAE", "MultiAgentGAE"]


def _check_unit_interval(name: str, x: Tensor) -> None:
    lo, hi = float(x.min()), float(x.max())
    if not (0.0 <= lo and hi <= 1.0):
        raise ValueError(f"{name} must lie in [0, 1], got values in [{lo}, {hi}]")


class GAE(_TorchRLGAE):
    __doc__ = (
        "fastmarl's :class:`torchrl.objectives.value.GAE`: same constructor and outputs, one "
        "exact op for the advantage (``vectorized`` is accepted and ignored: the scan is exact "
        "and vectorised either way).\n\n" + (_TorchRLGAE.__doc__ or "")
    )

    @functools.wraps(_TorchRLGAE.__init__)
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Checked once here, where a device sync is cheap, rather than on every call.
        _check_unit_interval("gamma", self.gamma)
        _check_unit_interval("lmbda", self.lmbda)

    def _discounts(self, tensordict: TensorDictBase) -> tuple[Tensor, Tensor]:
        reward = tensordict.get(("next", self.tensor_keys.reward), None)
        if reward is None:
            raise KeyError(
                f"{self.__class__.__name__}: no reward at {('next', self.tensor_keys.reward)} in "
                "the tensordict; point the estimator at it with set_keys(reward=...)"
            )
        if self.gamma.device != reward.device:
            self.gamma = self.gamma.to(reward.device)
        if self.lmbda.device != reward.device:
            self.lmbda = self.lmbda.to(reward.device)
        gamma = self.gamma
        steps_to_next_obs = tensordict.get(self.tensor_keys.steps_to_next_obs, None)
        if steps_to_next_obs is not None:
            gamma = gamma ** steps_to_next_obs.view_as(reward)
        return gamma, self.lmbda

    def _values(self, tensordict, params, target_params) -> tuple[Tensor, Tensor]:
        if self.value_network is None:
            value = tensordict.get(self.tensor_keys.value, None)
            next_value = tensordict.get(("next", self.tensor_keys.value), None)
            if value is None:
                raise ValueError(
                    f"The tensor with key {self.tensor_keys.value} is missing, and no value "
                    "network was provided."
                )
            if next_value is None:
                raise ValueError(
                    f"The tensor with key {('next', self.tensor_keys.value)} is missing, and no "
                    "value network was provided."
                )
            return value, next_value
        if params is not None:
            params = params.detach()
            if target_params is None:
                target_params = params.clone(False)
        held_out = params is None and target_params is None
        # Value gradients may still be wanted (differentiable=True), but never on the network's
        # own parameters: TorchRL holds the network out for the call, so do we.
        with hold_out_net(self.value_network) if held_out else nullcontext():
            value, next_value, valid = _compat.call_value_nets(
                self,
                data=tensordict,
                params=params,
                next_params=target_params,
                single_call=self.shifted,
                value_key=self.tensor_keys.value,
                detach_next=True,
                vmap_randomness=self.vmap_randomness,
            )
        if valid is not None:
            tensordict.set("shifted_valid", valid)
        return value, next_value

    def _advantage(self, tensordict, gamma, lmbda, value, next_value, time_dim):
        valid = tensordict.get("shifted_valid", default=None)
        data = _compat.prepare_shifted_tensordict(self, tensordict, valid, time_dim)
        reward = data.get(("next", self.tensor_keys.reward))
        done = data.get(("next", self.tensor_keys.done))
        terminated = data.get(("next", self.tensor_keys.terminated), default=done)
        # Team-shared signals come back as expanded views (stride 0 along the agents).
        reward, done, terminated = _compat.prepare_signals(self, reward, done, terminated, value)
        if isinstance(gamma, Tensor) and gamma.ndim:
            # Per-step γ (steps_to_next_obs) is shaped like the reward: broadcast it the same way.
            gamma = _compat.broadcast_optional(self, gamma, value)
        if self.auto_reset_env:
            truncated = _compat.broadcast_optional(self, tensordict.get(("next", "truncated")), value)
            # TorchRL adds gamma * value * truncated when any step is truncated; selecting gives
            # the same bits without the data-dependent branch (a sync, and a graph break).
            reward = torch.where(truncated, reward + gamma * value, reward)
            terminated = done
        advantage, value_target = generalized_advantage_estimate(
            gamma, lmbda, value, next_value, reward, done, terminated, time_dim=time_dim,
            check_discount_range=False,
        )
        return advantage, value_target, valid

    @_compat.self_set_skip_existing
    @_compat.self_set_grad_enabled
    @dispatch
    def forward(
        self,
        tensordict: TensorDictBase,
        *,
        params: TensorDictBase | None = None,
        target_params: TensorDictBase | None = None,
        time_dim: int | None = None,
    ) -> TensorDictBase:
        """Computes the GAE of ``tensordict`` (``[*B, T]``) and writes advantage and value target.

        Same behaviour as :meth:`torchrl.objectives.value.GAE.forward`.
        """
        if tensordict.batch_dims < 1:
            raise RuntimeError(
                "Expected input tensordict to have at least one dimension, got "
                f"tensordict.batch_size = {tensordict.batch_size}"
            )
        gamma, lmbda = self._discounts(tensordict)
        value, next_value = self._values(tensordict, params, target_params)
        time_dim = _compat.time_dim(self, time_dim, tensordict)
        advantage, value_target, valid = self._advantage(
            tensordict, gamma, lmbda, value, next_value, time_dim
        )
        if self.average_gae:
            advantage = _compat.normalize_advantage(
                self, advantage, valid, groups=_compat.group_ids(self, tensordict)
            )
        tensordict.set(self.tensor_keys.advantage, advantage)
        tensordict.set(self.tensor_keys.value_target, value_target)
        _compat.mask_shifted_output(self, tensordict, valid)
        return tensordict

    def value_estimate(
        self,
        tensordict,
        params: TensorDictBase | None = None,
        target_params: TensorDictBase | None = None,
        time_dim: int | None = None,
        **kwargs,
    ):
        """The value target alone (TorchRL computes it with its vectorised path; this is exact)."""
        if tensordict.batch_dims < 1:
            raise RuntimeError(
                "Expected input tensordict to have at least one dimensions, got"
                f"tensordict.batch_size = {tensordict.batch_size}"
            )
        gamma, lmbda = self._discounts(tensordict)
        time_dim = _compat.time_dim(self, time_dim, tensordict)
        if self.is_stateless and params is None:
            raise RuntimeError("Expected params to be passed to advantage module but got none.")
        value, next_value = self._values(tensordict, params, target_params)
        _, value_target, _ = self._advantage(tensordict, gamma, lmbda, value, next_value, time_dim)
        return value_target


class MultiAgentGAE(GAE, _TorchRLMultiAgentGAE):
    __doc__ = (
        "fastmarl's :class:`torchrl.objectives.value.MultiAgentGAE`: team-shared reward, done "
        "and terminated (``[*B, T, 1]``) are read with stride 0 across the agents by the scan "
        "rather than copied per agent.\n\n" + (_TorchRLMultiAgentGAE.__doc__ or "")
    )

    @functools.wraps(_TorchRLMultiAgentGAE.__init__)
    def __init__(self, *, agent_dim: int = -2, **kwargs):
        super().__init__(agent_dim=agent_dim, **kwargs)


# ``functools.wraps`` copies TorchRL's docstring and name; the signature shown is TorchRL's too.
GAE.__init__.__signature__ = inspect.signature(_TorchRLGAE.__init__)
MultiAgentGAE.__init__.__signature__ = inspect.signature(_TorchRLMultiAgentGAE.__init__)
