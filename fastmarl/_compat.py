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
import torch
import torchrl
from tensordict import TensorDict, TensorDictBase
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


# --------------------------------------------------------------------------- UpdateStep, MultiAgentMLP


def mlp_template(mlp):
    """``MultiAgentNetBase._empty_net``: the per-agent network TorchRL vmaps its parameters into."""
    return mlp._empty_net


def reshapes_output(net) -> bool:
    """``MLP._reshape_out``: whether TorchRL's MLP reshapes its output (then fastmarl's
    ``MultiAgentMLP`` leaves the forward to TorchRL)."""
    return bool(getattr(net, "_reshape_out", False))


def pre_forward_check(mlp, x):
    """``MultiAgentNetBase._pre_forward_check``: TorchRL's input check and centralised reshape."""
    return mlp._pre_forward_check(x)


def param_leaves(params, keys: tuple[tuple[str, str], ...]) -> list[torch.Tensor]:
    """The tensors at two-level ``keys`` of a ``MultiAgentMLP``'s ``params``, read at call time.

    ``params`` is the module's ``TensorDictParams``: TorchRL's ``TensorDict.to_module`` swaps a
    loss's (or a target network's) parameters in by rebinding its ``_param_td``, so reading
    through it gives the swapped-in tensors. The nested dicts (``TensorDict._tensordict``) are
    read directly: ``TensorDictParams.get`` goes through two wrappers per key (12 us for the
    six leaves of a 2x256 MLP on the CPU machine against 1.5 us), and plain dict reads keep
    ``torch.compile`` from tracing tensordict's lookup logic.
    """
    td = params._param_td if isinstance(params, TensorDictParams) else params
    root = td._tensordict
    out = []
    for outer, inner in keys:
        sub = root[outer]
        if isinstance(sub, TensorDictParams):
            sub = sub._param_td
        out.append(sub._tensordict[inner])
    return out


def is_plain_tensordict(td) -> bool:
    """Whether ``td`` stores its entries in ``_tensordict`` (a ``TensorDict`` or ``TensorDictParams``
    over one), the layout :func:`param_leaves` reads."""
    if isinstance(td, TensorDictParams):
        td = td._param_td
    return isinstance(td, TensorDictBase) and isinstance(getattr(td, "_tensordict", None), dict)


def optimizer_has_hooks(optimizer: torch.optim.Optimizer) -> bool:
    """Whether step pre/post hooks are registered on ``optimizer`` or globally: the raw step
    (:func:`raw_optimizer_step`) would skip them, so ``UpdateStep`` calls ``step()`` then."""
    from torch.optim import optimizer as optim_module

    return bool(
        getattr(optimizer, "_optimizer_step_pre_hooks", None)
        or getattr(optimizer, "_optimizer_step_post_hooks", None)
        or getattr(optim_module, "_global_optimizer_pre_hooks", None)
        or getattr(optim_module, "_global_optimizer_post_hooks", None)
    )


def raw_optimizer_step(optimizer: torch.optim.Optimizer):
    """``type(optimizer).step`` without torch's two wrappers, or ``None`` if it is not wrapped so.

    ``Optimizer._patch_step_function`` wraps the class's ``step`` in ``profile_hook_step`` (hooks,
    a profiler ``record_function`` that dynamo ignores with a warning) and each built-in
    optimizer decorates ``step`` with ``_use_grad_for_differentiable``, whose body calls
    ``torch._dynamo.graph_break()`` twice (pytorch/pytorch#104053: to split a compiled optimizer
    from a backward that is not traced). When the backward is traced in the same graph these
    two breaks only split the step; the function under both wrappers (``__wrapped__`` twice,
    ``functools.wraps``) is what runs here, under ``torch.no_grad()`` as the decorator would
    for ``differentiable=False``.
    """
    step = type(optimizer).step
    if not getattr(step, "hooked", False):
        return None
    inner = getattr(step, "__wrapped__", None)
    code = getattr(inner, "__code__", None)
    if code is None or code.co_name != "_use_grad":
        return None  # e.g. LBFGS (a closure, ``torch.no_grad`` instead): call step() as is
    return getattr(inner, "__wrapped__", None)


def sub_tensordict(td, path: tuple[str, ...]):
    """``td[path]`` as the plain ``TensorDict`` that holds it, walking the nested dicts
    (``TensorDictParams._param_td``, ``TensorDict._tensordict``) without tensordict's lookup
    logic: ``TensorDictParams.get`` of a nested key under ``torch.compile`` builds new
    ``TensorDictParams`` modules, which dynamo cannot trace (a graph break per lookup)."""
    node = td
    for step in path:
        if isinstance(node, TensorDictParams):
            node = node._param_td
        node = node._tensordict[step]
    if isinstance(node, TensorDictParams):
        node = node._param_td
    return node


def bound_params(params: TensorDictParams):
    """The ``TensorDict`` a ``TensorDictParams`` currently wraps."""
    return params._param_td


def bind_params(params: TensorDictParams, td) -> None:
    """Make ``params`` wrap ``td``: what ``TensorDict.to_module`` does to a ``TensorDictParams``
    submodule (``module._param_td = ...``), without the ``copy()`` of the old one that it
    returns for restoring (a new module, which breaks a ``torch.compile`` graph)."""
    params._param_td = td


def tensorclass_memo() -> dict | None:
    """tensordict's ``utils._TENSORCLASS_MEMO`` (class -> is it a tensorclass), or ``None``.

    tensordict 0.14's ``_is_tensorclass`` reads this dict even while dynamo traces (its other
    memos, ``_TENSOR_COLLECTION_MEMO``, ``_NON_TENSOR_MEMO``..., skip the lookup then), so a
    compiled graph guards on the dict's length, and any eager code that meets a new class
    between two calls (a reference loop, a collector, a value estimator) recompiles the step:
    measured on the QMIX step, a recompilation at the second call. ``UpdateStep`` keeps the
    memo at the contents the graph was compiled against (entries are a pure cache: a dropped
    one is recomputed by the next eager lookup).
    """
    from tensordict import utils

    memo = getattr(utils, "_TENSORCLASS_MEMO", None)
    return memo if isinstance(memo, dict) else None


# --------------------------------------------------------------------------- torch.distributed


def _functional_collectives():
    # torch.distributed._functional_collectives: the collectives torch.compile traces into its
    # graph (as _c10d_functional ops) and that eager autograd differentiates. Imported on use:
    # torch.distributed is not built on every platform.
    from torch.distributed import _functional_collectives

    return _functional_collectives


def all_gather_autograd(tensor: torch.Tensor, group) -> torch.Tensor:
    """``[W * d0, ...]``: every rank's ``tensor`` concatenated along dim 0 in rank order, through
    the functional collective, so that it is traced by ``torch.compile`` and differentiable:
    its backward is a reduce-scatter of the gradient with sum (a rank's input gets the sum over
    the ranks of the gradients of its slice). torch 2.13 names it ``all_gather_single_autograd``
    (and deprecates the older ``all_gather_tensor_autograd``, used when the new name is absent)."""
    funcol = _functional_collectives()
    gather = getattr(funcol, "all_gather_single_autograd", None)
    if gather is not None:
        return gather(tensor, 0, group)
    return funcol.all_gather_tensor_autograd(tensor, 0, group)


def all_reduce_functional(tensor: torch.Tensor, op: str, group) -> torch.Tensor:
    """A new tensor: ``tensor`` reduced (``"sum"``, ``"max"``...) over ``group`` by the functional
    collective (traced by ``torch.compile``; eagerly, waited on at first use)."""
    return _functional_collectives().all_reduce(tensor, op, group)
