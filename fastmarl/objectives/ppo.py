"""Drop-in ``ClipPPOLoss``: TorchRL's loss with the surrogate and critic loss as fused ops.

Everything a user configures is TorchRL's (constructor, ``set_keys``, ``in_keys``/``out_keys``,
value estimators, ``value_norm`` hooks, entropy handling, ``functional``, buffers that schedules
anneal); ``forward`` computes the same entries with:

- one ``torch.ops.fastmarl.ppo_clip`` call for the advantage standardisation (TorchRL's
  ``_standardize`` path: mean and unbiased std clamped at 1e-6, per agent when the agent dim is
  excluded), the log-space clipped surrogate with asymmetric ε, and ``clip_fraction``,
  ``kl_approx``, ``ESS``, ``max_ratio``, ``mean_ratio``;
- one ``torch.ops.fastmarl.ppo_critic`` call for the critic distance (l1 / l2 / smooth_l1),
  ``clip_value``, ``value_clip_fraction``, ``critic_coeff``, the reduction and the explained
  variance;
- no per-call ``to_module`` parameter swap when the loss's parameter TensorDicts hold the
  modules' own parameters (see :class:`fastmarl.objectives.common.FunctionalParams`), which also
  keeps ``torch.compile`` from re-guarding every call.

Configurations outside what the ops cover run TorchRL's own ``forward``, unchanged, so the
numbers never differ silently: ``delay_actor=True``, ``max_importance_ratio``, composite
action distributions, validity masks in the input (``("collector", "mask")``,
``"shifted_valid"``), and log-weights with more dims than the advantage (per-token actions).
"""

from __future__ import annotations

import functools
import inspect
import warnings

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import CompositeDistribution, dispatch
from torchrl.objectives.ppo import ClipPPOLoss as _TorchRLClipPPOLoss

from fastmarl import _compat
from fastmarl.functional import check_process_group, clip_bounds, ppo_clip_loss_with_bounds, ppo_critic_loss
from fastmarl.objectives.common import (
    fastmarl_value_estimators,
    make_value_estimator_with,
    module_params_context,
)

__all__ = ["ClipPPOLoss"]


def _broadcasts_to(shape, target) -> bool:
    return len(shape) <= len(target) and all(s in (1, t) for s, t in zip(reversed(shape), reversed(target)))


class FusedPPOMixin:
    """The fused ``forward`` and fastmarl's value estimators, for TorchRL's ClipPPOLoss family.

    One option beyond TorchRL's constructor, ``advantage_stats_group`` (keyword, default
    ``None``): a ``torch.distributed.ProcessGroup`` whose ranks each hold a shard of the
    minibatch. With ``normalize_advantage``, the advantage is standardised with the (per-agent,
    for ``normalize_advantage_exclude_dims=(-2,)``) mean and unbiased std of every rank's
    shard together: one all-gather per loss call (:func:`fastmarl.functional.ppo_clip_loss`'s
    ``process_group``). It is a plain attribute (settable later, never in ``state_dict``).
    Configurations that run TorchRL's own ``forward`` (see the module docstring) cannot honour
    it and raise instead of standardising each shard on its own.
    """

    def __init__(self, *args, advantage_stats_group=None, **kwargs):
        check_process_group(advantage_stats_group)
        super().__init__(*args, **kwargs)
        self.advantage_stats_group = advantage_stats_group
        self._check_clip_epsilon()

    def _torchrl_forward(self, tensordict: TensorDictBase, why: str) -> TensorDictBase:
        # TorchRL's forward standardises with this rank's statistics only.
        if self.advantage_stats_group is not None and self.normalize_advantage and self.advantage_norm is None:
            raise ValueError(
                f"advantage_stats_group is set, but this call runs TorchRL's own forward ({why}), which "
                "standardises the advantage with this rank's statistics only; set advantage_stats_group=None "
                "to accept per-rank statistics"
            )
        return super().forward(tensordict)

    def _check_clip_epsilon(self) -> None:
        # Called at the end of __init__. TorchRL validates a (ε_low, ε_high) pair but, "for
        # backward compatibility", not a float ε, with which its loss is NaN (ε > 1: log1p(-ε) is
        # NaN) or clips every ratio (ε < 0). The drop-in rejects those with the pair's range; the
        # forward checks the bounds again (CPU buffers), for a schedule that anneals ε out of range.
        epsilon = getattr(self, "clip_epsilon", None)  # the float's buffer (a pair has two others)
        if isinstance(epsilon, torch.Tensor) and epsilon.numel() == 1:
            clip_bounds(float(epsilon), epsilon)

    def make_value_estimator(self, value_type=None, **hyperparams):
        value_type, hp = _compat.prepare_value_estimator_kwargs(self, value_type, **hyperparams)
        if value_type is None:
            return self
        keys = {name: getattr(self.tensor_keys, name) for name in (
            "advantage", "value", "value_target", "reward", "done", "terminated", "sample_log_prob")}
        if not make_value_estimator_with(self, fastmarl_value_estimators(), value_type, hp, keys):
            super().make_value_estimator(value_type, **hyperparams)
        return self

    def _fused_supported(self) -> bool:
        return not self.delay_actor and self.max_importance_ratio is None

    def _has_loss_mask(self, tensordict: TensorDictBase) -> bool:
        return any(tensordict.get(key, None) is not None for key in _compat.loss_mask_keys(self))

    def _warn_normalization(self, advantage, tensordict):
        # TorchRL's warning for a multi-agent advantage standardised across agents.
        if (self.normalize_advantage and advantage.numel() > tensordict.batch_size.numel()
                and not len(self.normalize_advantage_exclude_dims)):
            warnings.warn(
                "You requested advantage normalization and the advantage key has more dimensions"
                " than the tensordict batch. Make sure to pass `normalize_advantage_exclude_dims` "
                "if you want to keep any dimension independent while computing normalization statistics. "
                "If you are working in multi-agent/multi-objective settings this is highly suggested."
            )

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        if not self._fused_supported():
            return self._torchrl_forward(tensordict, "delay_actor=True or max_importance_ratio")
        if self._has_loss_mask(tensordict):
            return self._torchrl_forward(tensordict, "a validity mask in the data")
        # Shallow copy, as TorchRL: the estimator and the networks write into it, not the caller's.
        data = tensordict.clone(False)
        advantage = data.get(self.tensor_keys.advantage, None, as_padded_tensor=True)
        update_norm = advantage is None
        if advantage is None:
            if self.critic_network is None:
                raise RuntimeError(
                    "Critic network is not specified, cannot compute advantage within forward."
                )
            self.value_estimator(
                data,
                params=_compat.detached_critic_params(self),
                target_params=self.target_critic_network_params,
            )
            if self._has_loss_mask(data):  # e.g. the estimator's "shifted_valid"
                return self._torchrl_forward(tensordict, "a validity mask from the value estimator")
            advantage = data.get(self.tensor_keys.advantage)
        normalize = self.normalize_advantage
        if self.advantage_norm is not None:
            advantage = _compat.scale_advantage(self, advantage, data, update=update_norm)
            normalize = False
        elif normalize and advantage.numel() > 1:
            self._warn_normalization(advantage, data)

        adv_shape = advantage.shape[:-1]
        prev_log_prob = _compat.maybe_get_or_select(data, self.tensor_keys.sample_log_prob, adv_shape)
        if prev_log_prob is None:
            raise KeyError(f"Couldn't find the log-prob {self.tensor_keys.sample_log_prob} in the input data.")
        if prev_log_prob.requires_grad:
            raise RuntimeError(f"tensordict stored {self.tensor_keys.sample_log_prob} requires grad.")
        with module_params_context(self, "actor_network"):
            dist = self.actor_network.get_dist(data)
        if isinstance(dist, CompositeDistribution):
            return self._torchrl_forward(tensordict, "a composite action distribution")
        action = _compat.maybe_get_or_select(data, self.tensor_keys.action)
        if action.requires_grad:
            raise RuntimeError(f"tensordict stored {self.tensor_keys.action} requires grad.")
        log_prob = dist.log_prob(action)
        per_token = (advantage.shape[-1] == 1 and log_prob.ndim > len(adv_shape)
                     and log_prob.shape[: len(adv_shape)] == adv_shape)
        if per_token or not isinstance(prev_log_prob, torch.Tensor):
            # One log-weight per action token against one advantage per decision: TorchRL
            # broadcasts the advantage; the op covers one ratio per sample.
            return self._torchrl_forward(tensordict, "per-token log-probabilities")
        if ((advantage.shape != (*log_prob.shape, 1) or prev_log_prob.shape != log_prob.shape)
                and _broadcasts_to(advantage.shape, (*log_prob.shape, 1))
                and _broadcasts_to(prev_log_prob.shape, log_prob.shape)):
            # E.g. a team advantage [N, 1, 1] against per-agent log-probs [N, A]: TorchRL
            # broadcasts it, and its forward computes that case. Shapes that do not broadcast get
            # the functional's error naming the argument (a flat [N] advantage: TorchRL's "outer
            # product" error, or a size mismatch deep inside its forward).
            return self._torchrl_forward(tensordict, "an advantage broadcast over the log-probabilities")

        surrogate = ppo_clip_loss_with_bounds(
            log_prob, prev_log_prob, advantage, *_compat.log_clip_bounds(self),
            normalize_advantage=normalize,
            normalize_advantage_exclude_dims=tuple(self.normalize_advantage_exclude_dims),
            reduction=self.reduction, process_group=self.advantage_stats_group,
        )
        out = {
            "loss_objective": surrogate["loss_objective"],
            "clip_fraction": surrogate["clip_fraction"],
            "kl_approx": surrogate["kl_approx"],
        }
        if self.entropy_bonus:
            entropy = _compat.entropy(self, dist, adv_shape)
            out["entropy"] = entropy.detach().mean()
            out["loss_entropy"] = _compat.reduce(
                _compat.weighted_loss_entropy(self, entropy), self.reduction).squeeze(-1)
        if _compat.has_critic(self):
            out.update(self._fused_loss_critic(data))
        out["ESS"] = surrogate["ESS"]
        out["max_ratio"] = surrogate["max_ratio"]
        out["mean_ratio"] = surrogate["mean_ratio"]
        td_out = TensorDict(out, batch_size=[])
        # TorchRL also clears the parameter TensorDicts; under torch.compile that sets
        # ``_last_op`` on their leaves, i.e. an attribute write on every parameter, which
        # breaks the graph at the optimizer step that follows (dynamo's "pending mutation on
        # parameter"). This path writes nothing into them: the input and output suffice.
        _compat.clear_weakrefs(self, tensordict, td_out)
        return td_out

    def _fused_loss_critic(self, data: TensorDictBase) -> dict:
        if self.separate_losses:
            data = data.detach()
        target_return = data.get(self.tensor_keys.value_target, None)
        if target_return is None:
            raise KeyError(
                f"the key {self.tensor_keys.value_target} was not found in the input tensordict. "
                f"Make sure you provided the right key and the value_target (i.e. the target "
                f"return) has been retrieved accordingly. Advantage classes such as GAE, "
                f"TDLambdaEstimate and TDEstimate all return a 'value_target' entry that "
                f"can be used for the value loss."
            )
        old_state_value = None
        if self.clip_value:
            old_state_value = data.get(self.tensor_keys.value, None)
            if old_state_value is None:
                raise KeyError(
                    f"clip_value is set to {self.clip_value}, but "
                    f"the key {self.tensor_keys.value} was not found in the input tensordict. "
                    f"Make sure that the 'value_key' passed to PPO exists in the input tensordict."
                )
        with module_params_context(self, "critic_network"):
            state_value = self.critic_network(data).get(self.tensor_keys.value, None)
        if state_value is None:
            raise KeyError(
                f"the key {self.tensor_keys.value} was not found in the critic output tensordict. "
                f"Make sure that the 'value_key' passed to PPO is accurate."
            )
        # TorchRL's hook (MAPPOLoss/IPPOLoss push the three through their ValueNorm here).
        target_return, state_value, old_state_value = _compat.critic_loss_inputs(
            self, target_return, state_value, old_state_value
        )
        out = ppo_critic_loss(
            state_value, target_return, old_value=old_state_value,
            clip_value=self.clip_value if self.clip_value else None,
            coeff=self.critic_coeff, loss_critic_type=self.loss_critic_type,
            reduction=self.reduction, explained_variance=self.log_explained_variance,
        )
        # TorchRL's order: loss_critic, value_clip_fraction, explained_variance.
        return {key: out[key] for key in ("loss_critic", "value_clip_fraction", "explained_variance") if key in out}


def init_with_stats_group(torchrl_class):
    """An ``__init__`` for a drop-in of ``torchrl_class``: TorchRL's signature plus the keyword
    ``advantage_stats_group=None`` (:class:`FusedPPOMixin`), shown by ``inspect.signature``."""

    @functools.wraps(torchrl_class.__init__)
    def __init__(self, *args, advantage_stats_group=None, **kwargs):
        FusedPPOMixin.__init__(self, *args, advantage_stats_group=advantage_stats_group, **kwargs)

    signature = inspect.signature(torchrl_class.__init__)
    params = list(signature.parameters.values())
    at = next((i for i, p in enumerate(params) if p.kind is p.VAR_KEYWORD), len(params))
    params.insert(at, inspect.Parameter("advantage_stats_group", inspect.Parameter.KEYWORD_ONLY, default=None))
    __init__.__signature__ = signature.replace(parameters=params)
    del __init__.__wrapped__  # inspect.signature would follow it to TorchRL's
    return __init__


class ClipPPOLoss(FusedPPOMixin, _TorchRLClipPPOLoss):
    __doc__ = (
        "fastmarl's :class:`torchrl.objectives.ClipPPOLoss`: same constructor, keys and outputs; "
        "the surrogate and the critic loss run as fused ops (see :mod:`fastmarl.objectives.ppo` "
        "for what falls back to TorchRL's math). ``ValueEstimators.GAE``/``MAGAE`` build "
        "fastmarl's estimators. A float ``clip_epsilon`` outside [0, 1) raises ``ValueError`` "
        "(TorchRL checks only a pair). One more keyword, ``advantage_stats_group``: standardise the "
        "advantage with statistics over every rank of a ``torch.distributed`` group "
        "(:class:`FusedPPOMixin`).\n\n" + (_TorchRLClipPPOLoss.__doc__ or "")
    )
    __init__ = init_with_stats_group(_TorchRLClipPPOLoss)
