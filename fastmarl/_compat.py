"""Every private name of TorchRL, tensordict and ``torch.nn`` that fastmarl reads, in one place.

fastmarl's drop-ins subclass TorchRL's classes and reuse their internals. Those internals carry
no compatibility promise, so each one fastmarl touches goes through a function here, and the
versions this was written and tested against are checked on import:

- torchrl 0.14.1 (``>=0.14.1,<0.15``), tensordict 0.14.x (``>=0.14,<0.15``), as ``pyproject.toml``
  pins them.

Any other version raises ``ImportError`` naming the installed and the expected versions; set
``FASTMARL_ALLOW_UNTESTED_VERSIONS=1`` to import anyway (with a warning), e.g. to find out what
a new TorchRL release breaks.
"""

from __future__ import annotations

import os
import warnings

import tensordict
import torchrl
from tensordict import TensorDict
from tensordict.nn import TensorDictParams
from torchrl.objectives.utils import _coerce_value_type, _maybe_get_or_select, _reduce
from torchrl.objectives.value.advantages import _self_set_grad_enabled, _self_set_skip_existing

# (lowest tested, first untested) per package.
TESTED_VERSIONS = {"torchrl": ((0, 14, 1), (0, 15)), "tensordict": ((0, 14), (0, 15))}


def _release(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_versions(installed: dict[str, str] | None = None) -> None:
    """Raise ``ImportError`` unless the installed TorchRL and tensordict are the tested ones."""
    installed = installed or {"torchrl": torchrl.__version__, "tensordict": tensordict.__version__}
    wrong = []
    for name, (low, high) in TESTED_VERSIONS.items():
        release = _release(installed[name])
        if not low <= release < high:
            wrong.append(f"{name} {installed[name]} (fastmarl is written against "
                         f">={'.'.join(map(str, low))},<{'.'.join(map(str, high))})")
    if not wrong:
        return
    message = ("fastmarl reads private internals of TorchRL and tensordict and was not tested "
               "with " + "; ".join(wrong) + ". Install the tested versions, or set "
               "FASTMARL_ALLOW_UNTESTED_VERSIONS=1 to import anyway.")
    if os.environ.get("FASTMARL_ALLOW_UNTESTED_VERSIONS", "0") not in ("", "0"):
        warnings.warn(message, stacklevel=2)
        return
    raise ImportError(message)


check_versions()

# --------------------------------------------------------------------------- tensordict, torch.nn

maybe_get_or_select = _maybe_get_or_select  # torchrl.objectives.utils: a key or its selection
reduce = _reduce  # torchrl.objectives.utils: TorchRL's loss reduction by name


def param_tensordict(params):
    """The TensorDict a ``TensorDictParams`` wraps; a plain TensorDict (TorchRL keeps one for a
    module without parameters) is its own."""
    return params._param_td if isinstance(params, TensorDictParams) else params


def leaf_container(root, key: tuple[str, ...]) -> dict:
    """The dict that holds ``key``'s leaf under a module, a TensorDict or a TensorDictParams:
    its ``_parameters``/``_buffers`` or the TensorDict's storage. Comparing the objects in two
    such dicts is how :class:`fastmarl.objectives.common.FunctionalParams` checks, in well
    under a microsecond, that a loss's parameters are its modules' own."""
    *path, name = key
    node = root
    for step in path:
        node = param_tensordict(node)
        if isinstance(node, TensorDict):
            node = node._tensordict[step]
        else:
            node = node._modules[step] if step in node._modules else getattr(node, step)
    node = param_tensordict(node)
    if isinstance(node, TensorDict):
        return node._tensordict
    return node._parameters if name in node._parameters else node._buffers


def parameter_container(module) -> dict:
    """``module._parameters``: where ``nn.Module`` keeps its own parameters."""
    return module._parameters


def linear_tensors(linear) -> tuple:
    """``(weight, bias)`` of an ``nn.Linear`` as it holds them now: a parameter, or the plain
    tensor ``TensorDict.to_module`` swapped in (which lives in ``__dict__``). Reading
    ``_parameters`` first was 5 against 8 us a call on the CPU machine."""
    own = linear._parameters
    weight, bias = own.get("weight"), own.get("bias")
    return (linear.weight if weight is None else weight, linear.bias if bias is None else bias)


# --------------------------------------------------------------------------- TorchRL losses

coerce_value_type = _coerce_value_type  # a ValueEstimators member from a member or a string alias

self_set_grad_enabled = _self_set_grad_enabled  # value estimators' forward decorators
self_set_skip_existing = _self_set_skip_existing


def prepare_value_estimator_kwargs(loss, value_type, **hyperparams):
    """``LossModule._prepare_value_estimator_kwargs``: ``(value_type, hyperparams)`` defaulted."""
    return loss._prepare_value_estimator_kwargs(value_type, **hyperparams)


def set_value_estimator(loss, estimator) -> None:
    """What ``LossModule.make_value_estimator`` stores: ``loss._value_estimator``."""
    loss._value_estimator = estimator


def detached_critic_params(loss):
    """``PPOLoss._cached_critic_network_params_detached``: what its estimator is called with."""
    return loss._cached_critic_network_params_detached


def scale_advantage(loss, advantage, data, update: bool):
    """``PPOLoss._scale_advantage``: the ``advantage_norm`` hook."""
    return loss._scale_advantage(advantage, data, update=update)


def entropy(loss, dist, adv_shape):
    """``PPOLoss._get_entropy``: the (Monte-Carlo) entropy of the action distribution."""
    return loss._get_entropy(dist, adv_shape=adv_shape)


def weighted_loss_entropy(loss, entropy_value):
    """``PPOLoss._weighted_loss_entropy``: ``-entropy_coeff * entropy`` (per head)."""
    return loss._weighted_loss_entropy(entropy_value)


def has_critic(loss) -> bool:
    """``PPOLoss._has_critic``: whether the loss computes ``loss_critic``."""
    return loss._has_critic


def critic_loss_inputs(loss, target_return, state_value, old_state_value):
    """``PPOLoss._critic_loss_inputs``: the ``value_norm`` hook of MAPPO/IPPO."""
    return loss._critic_loss_inputs(target_return, state_value, old_state_value)


def clear_weakrefs(loss, *tensordicts_and_names) -> None:
    """``LossModule._clear_weakrefs``."""
    loss._clear_weakrefs(*tensordicts_and_names)


def log_clip_bounds(loss):
    """``ClipPPOLoss._clip_bounds``: ``(log1p(-ε_low), log1p(ε_high))`` as tensors."""
    return loss._clip_bounds


def loss_mask_keys(loss):
    """``PPOLoss._loss_mask_keys``: the keys of validity masks the fused path does not cover."""
    return loss._loss_mask_keys()


def target_params(loss):
    """``LossModule._cached_target_params`` (QMixerLoss: the target networks' parameters)."""
    return loss._cached_target_params


# --------------------------------------------------------------------------- TorchRL estimators


def call_value_nets(estimator, **kwargs):
    """``ValueEstimatorBase._call_value_nets``: value and next value (shifted, vmapped, ...)."""
    return estimator._call_value_nets(**kwargs)


def prepare_shifted_tensordict(estimator, tensordict, valid, time_dim):
    """``GAE._prepare_shifted_tensordict``."""
    return estimator._prepare_shifted_tensordict(tensordict, valid, time_dim)


def prepare_signals(estimator, reward, done, terminated, value):
    """``GAE._prepare_signals`` (``MultiAgentGAE`` broadcasts team signals over the agents)."""
    return estimator._prepare_signals(reward, done, terminated, value)


def broadcast_optional(estimator, tensor, value):
    """``GAE._broadcast_optional``."""
    return estimator._broadcast_optional(tensor, value)


def time_dim(estimator, time_dim_arg, tensordict):
    """``ValueEstimatorBase._get_time_dim``."""
    return estimator._get_time_dim(time_dim_arg, tensordict)


def normalize_advantage(estimator, advantage, valid, groups):
    """``GAE._normalize_advantage`` (``average_gae``)."""
    return estimator._normalize_advantage(advantage, valid, groups=groups)


def group_ids(estimator, tensordict):
    """``GAE._group_ids`` (``group_key``)."""
    return estimator._group_ids(tensordict)


def mask_shifted_output(estimator, tensordict, valid) -> None:
    """``GAE._mask_shifted_output``."""
    estimator._mask_shifted_output(tensordict, valid)
