"""Drop-in ``QMixerLoss``: TorchRL's QMIX/VDN loss, with fastmarl's fused mixer called directly.

:class:`QMixerLoss` subclasses TorchRL's: constructor, keys (``set_keys``), ``delay_value``
target networks, value estimators (TD0 by default, TD1, TD(λ)), the ``"loss"`` output and the
TD-error priority written back to the input are TorchRL's. A fastmarl
:class:`~fastmarl.modules.QMixer` runs as one op whichever loss calls it; with this loss, when
the mixer is a fastmarl ``QMixer`` in a ``TensorDictModule`` and the value estimator is one of
TorchRL's TD estimators built by the loss, the loss also calls the op with the online and target
mixer parameters directly instead of swapping them into the module with
``TensorDict.to_module`` (two swaps a step: 111 and ~105 us of a 2.6 ms step at B=32 on the CPU
machine). Any other mixer or estimator takes TorchRL's ``forward`` unchanged.
"""

from __future__ import annotations

import functools

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule, dispatch
from torchrl.envs.utils import step_mdp
from torchrl.objectives.multiagent.qmixer import QMixerLoss as _TorchRLQMixerLoss
from torchrl.objectives.utils import distance_loss
from torchrl.objectives.value import TD0Estimator, TD1Estimator, TDLambdaEstimator

from fastmarl.modules.models.multiagent import QMixer
from fastmarl.modules.models.multiagent_mlp import MLPParamsSwap
from fastmarl.ops.qmix import MODULE_PARAM_NAMES, QMixParams

__all__ = ["QMixerLoss"]

# Estimators whose value_estimate(next_value=...) is all the loss's target step needs: their
# own next value is ValueEstimatorBase._next_value, which this loss computes the same way.
_TD_ESTIMATORS = (TD0Estimator, TD1Estimator, TDLambdaEstimator)


class QMixerLoss(_TorchRLQMixerLoss):
    __doc__ = (
        "fastmarl's :class:`torchrl.objectives.multiagent.QMixerLoss`: same constructor, keys, "
        "target networks, value estimators and outputs; with a :class:`fastmarl.modules.QMixer` "
        "the mixer is one fused op called straight from the loss's parameters.\n\n"
        + (_TorchRLQMixerLoss.__doc__ or "")
    )

    @functools.wraps(_TorchRLQMixerLoss.__init__)
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        mixer = self.mixer_network
        module = getattr(mixer, "module", None)
        # The mixer's fused_forward, a bound method: not a submodule (the loss's state_dict
        # stays TorchRL's) and not an nn.Module in __dict__ either, which LossModule's
        # reset_parameters_recursive() would try to reset as one of the loss's networks.
        self.__dict__["_fused_forward"] = None
        if isinstance(mixer, TensorDictModule) and isinstance(module, QMixer):
            names = MODULE_PARAM_NAMES[module.hypernet_layers]
            # Positions of the op's tensors among the parameter TensorDict's leaves.
            keys = [".".join(k[1:]) for k in self.mixer_network_params.keys(True, True)]
            if sorted(keys) == sorted(names) and len(mixer.in_keys) == 2:
                self.__dict__["_fused_forward"] = module.fused_forward
                self._mixer_order = [keys.index(name) for name in names]
        # Parameter swaps into the local Q-network (online and target) without to_module when
        # its parameters all live in fastmarl MultiAgentMLPs: TorchRL's swap copies a
        # TensorDictParams per call, a graph break each under torch.compile (18 per QMIX step).
        self.__dict__["_local_swap"] = MLPParamsSwap.build(self.local_value_network, self.local_value_network_params)

    def _local_values(self, tensordict: TensorDictBase, params: TensorDictBase) -> None:
        """``self.local_value_network(tensordict)`` with ``params`` swapped in."""
        swap = self.__dict__.get("_local_swap")
        if swap is None:
            with params.to_module(self.local_value_network, preserve_module_state=False):
                self.local_value_network(tensordict)
            return
        saved = swap.bind(params)
        try:
            self.local_value_network(tensordict)
        finally:
            swap.restore(saved)

    def _mixer_params(self, params: TensorDictBase) -> QMixParams:
        leaves = list(params.values(True, True))
        return QMixParams(*(leaves[i] for i in self._mixer_order))

    def _mix(self, tensordict: TensorDictBase, params: TensorDictBase) -> torch.Tensor:
        # What self.mixer_network(tensordict) does under params.to_module(...), without the swap.
        # A missing input raises KeyError naming the key, as TensorDictModule does in TorchRL's path.
        mixer = self.mixer_network
        chosen_action_value, state = (tensordict[key] for key in mixer.in_keys)
        q_tot = self._fused_forward(chosen_action_value, state, self._mixer_params(params))
        tensordict.set(mixer.out_keys[0], q_tot)
        return q_tot

    def _fast_target(self) -> bool:
        # Whether the estimator needs nothing but next_value from the loss (then the loss computes
        # it with the fused mixer). Read after the online pass, in TorchRL's order: building the
        # default estimator checks its keys, and a missing key must fail as TorchRL's does.
        estimator = self.value_estimator
        return (
            type(estimator) in _TD_ESTIMATORS
            and estimator.value_network is self.global_value_network
            and not getattr(estimator, "shifted", False)
        )

    def _target_next_value(self, tensordict: TensorDictBase) -> torch.Tensor:
        # ValueEstimatorBase._next_value with the global value network's two halves run in turn,
        # with the target parameters (TorchRL's _cached_target_params, without building it).
        step_td = step_mdp(tensordict, keep_other=False)
        self._local_values(step_td, self.target_local_value_network_params)
        self._mix(step_td, self.target_mixer_network_params)
        return step_td.get(self.value_estimator.tensor_keys.value)

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        """TorchRL's ``QMixerLoss.forward``: writes the TD-error priority, returns ``"loss"``."""
        if self._fused_forward is None:
            return super().forward(tensordict)
        td_copy = tensordict.clone(False)
        self._local_values(td_copy, self.local_value_network_params)

        action = tensordict.get(self.tensor_keys.action)
        pred_val = td_copy.get(self.tensor_keys.action_value)  # [*B, n_agents, n_actions]
        if self.action_space == "categorical":
            if action.shape != pred_val.shape:
                # unsqueeze the action if it lacks on trailing singleton dim
                action = action.unsqueeze(-1)
            pred_val_index = torch.gather(pred_val, -1, index=action)
        else:
            action = action.to(torch.float)
            pred_val_index = (pred_val * action).sum(-1, keepdim=True)

        td_copy.set(self.tensor_keys.local_value, pred_val_index)  # [*B, n_agents, 1]
        self._mix(td_copy, self.mixer_network_params)
        pred_val_index = td_copy[self.tensor_keys.global_value].squeeze(-1)  # [*B]
        if not self._fast_target():
            # Another estimator (GAE, V-trace, a shifted TD): TorchRL's forward from the start,
            # which swaps the target parameters in for it.
            return super().forward(tensordict)

        # The TD estimators read target_params only to compute next_value, given here.
        target_value = self.value_estimator.value_estimate(
            td_copy, next_value=self._target_next_value(td_copy),
        ).squeeze(-1)

        with torch.no_grad():
            priority_tensor = (pred_val_index - target_value).pow(2)
            priority_tensor = priority_tensor.unsqueeze(-1)
        if tensordict.device is not None:
            priority_tensor = priority_tensor.to(tensordict.device)

        tensordict.set(
            self.tensor_keys.priority,
            priority_tensor,
            inplace=True,
        )
        loss = distance_loss(pred_val_index, target_value, self.loss_function)
        return TensorDict({"loss": loss.mean()}, [])
