"""Shared plumbing of fastmarl's drop-in losses."""

from __future__ import annotations

from contextlib import nullcontext

from torchrl.objectives.utils import (
    ValueEstimators,
    dispatch_value_estimator,
    get_value_estimator_entry,
)

from fastmarl import _compat


class FunctionalParams:
    """Whether a functional loss may call its module as it is, without ``to_module``.

    TorchRL's functional losses swap their parameter TensorDict into the module on every call
    (``params.to_module(module)``: 260 us per module and call on the CPU machine for a 2x256
    MultiAgentMLP, and a fresh guard for ``torch.compile`` every call). When every leaf of the
    TensorDict *is* the module's own parameter or buffer, which is what
    ``convert_to_functional`` builds and what ``loss.to(...)``/``double()`` keep, the swap
    changes nothing and is skipped. The check compares the leaves object for object (under a
    microsecond); when it fails (``separate_losses`` detaches shared leaves, a leaf was replaced)
    the swap happens as in TorchRL.
    """

    def __init__(self, params, module):
        self.params = params
        self.module = module
        self._resolved_td = None
        self._pairs = ()

    def _resolve(self):
        self._resolved_td = _compat.param_tensordict(self.params)
        pairs = []
        for key in self.params.keys(True, True):
            key = key if isinstance(key, tuple) else (key,)
            pairs.append((_compat.leaf_container(self.params, key),
                          _compat.leaf_container(self.module, key), key[-1]))
        self._pairs = tuple(pairs)

    def identical(self) -> bool:
        if _compat.param_tensordict(self.params) is not self._resolved_td:
            self._resolve()
        for params_leaves, module_leaves, name in self._pairs:
            if params_leaves.get(name) is not module_leaves.get(name):
                return False
        return True

    def context(self):
        """``nullcontext()`` when the module already holds the parameters, else TorchRL's swap."""
        if self.identical():
            return nullcontext()
        return self.params.to_module(self.module, preserve_module_state=False)


def module_params_context(loss, module_name: str):
    """The parameter context for ``loss.<module_name>`` (functional or not)."""
    params = getattr(loss, module_name + "_params", None)
    if not loss.functional or params is None:
        return nullcontext()
    cache = loss.__dict__.setdefault("_fastmarl_params", {})
    sync = cache.get(module_name)
    if sync is None or sync.params is not params:
        sync = cache[module_name] = FunctionalParams(params, loss.__dict__[module_name])
    return sync.context()


def make_value_estimator_with(loss, estimators: dict, value_type, hyperparams, tensor_keys):
    """``make_value_estimator`` that builds fastmarl's estimator for the types in ``estimators``.

    TorchRL's registry is never written (a TorchRL loss in the same process keeps TorchRL's
    estimators): the type is resolved and defaulted like ``dispatch_value_estimator`` does,
    then fastmarl's class is built instead of the registered one. Other types go to TorchRL.
    Returns ``True`` when the call was handled here.
    """
    coerced = _compat.coerce_value_type(value_type)
    cls = estimators.get(coerced)
    if cls is None:
        return False
    if coerced not in set(loss.SUPPORTED_VALUE_ESTIMATORS):
        dispatch_value_estimator(loss, coerced, supported=loss.SUPPORTED_VALUE_ESTIMATORS, **hyperparams)
    loss.value_type = coerced
    merged = {**get_value_estimator_entry(coerced).default_kwargs, **hyperparams}
    if hasattr(loss, "gamma"):
        merged.setdefault("gamma", loss.gamma)
    estimator = cls.for_loss(loss, **merged)
    _compat.set_value_estimator(loss, estimator)
    estimator.set_keys(**tensor_keys)
    return True


def fastmarl_value_estimators() -> dict:
    from fastmarl.objectives.value import GAE, MultiAgentGAE

    return {ValueEstimators.GAE: GAE, ValueEstimators.MAGAE: MultiAgentGAE}
