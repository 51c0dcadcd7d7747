"""Private TorchRL / tensordict / torch.optim attribute access of ``UpdateStep`` and ``MultiAgentMLP``.

Each function reads one private attribute (names starting with ``_``) of a library object, so
that a version bump is fixed here only (candidates for ``fastmarl/_compat.py``).
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictParams


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
