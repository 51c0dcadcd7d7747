"""The implementations an op can run, and the one switch that forces one (for tests and benchmarks).

Every op folder's ``op.py`` has one function, ``select_path``, that picks among these; its
docstring holds the policy and the measurements behind it:

- ``Path.OP``: the registered ``torch.ops.fastmarl.<op>`` call, with its autograd. Its host
  function sends CUDA tensors to the Triton kernels (``fastmarl/ops/<op>/triton.py``) and any
  other tensor to the torch kernels (``cpu.py``).
- ``Path.FUSED``: ``cpu.py``'s fused torch kernels in a ``torch.autograd.Function``, without the
  op boundary (its dispatch costs more than the math at MARL minibatch sizes on a CPU).
- ``Path.COMPOSITE``: differentiable plain-torch code from ``cpu.py`` under ordinary autograd:
  what ``torch.compile`` traces and fuses off CUDA, and the fastest eager path for small calls.

``force_path`` overrides the policy inside a ``with`` block::

    with fastmarl.ops.force_path("fused", "ppo_clip", "ppo_critic"):
        ...

A forced path that cannot run the call (e.g. ``composite`` for mixed-dtype QMIX inputs) raises.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Path", "force_path", "forced_path", "OP_NAMES"]

# The names force_path accepts: one per hot path (a backward always follows its forward's path).
OP_NAMES = ("gae", "ppo_clip", "ppo_critic", "qmix")


class Path(str, enum.Enum):
    OP = "op"
    FUSED = "fused"
    COMPOSITE = "composite"


_FORCED: dict[str, Path] = {}


@contextmanager
def force_path(path: Path | str, *ops: str) -> Iterator[None]:
    """Run ``ops`` (default: all of :data:`OP_NAMES`) through ``path`` inside the block."""
    path = Path(path)
    ops = ops or OP_NAMES
    unknown = [op for op in ops if op not in OP_NAMES]
    if unknown:
        raise ValueError(f"force_path: unknown op(s) {unknown}; expected names from {list(OP_NAMES)}")
    previous = {op: _FORCED.get(op) for op in ops}
    _FORCED.update({op: path for op in ops})
    try:
        yield
    finally:
        for op, old in previous.items():
            if old is None:
                _FORCED.pop(op, None)
            else:
                _FORCED[op] = old


def forced_path(op: str) -> Path | None:
    """The path forced for ``op`` by an enclosing :func:`force_path`, or None."""
    return _FORCED.get(op)
