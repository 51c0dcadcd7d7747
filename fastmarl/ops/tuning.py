"""Launch configurations of the Triton kernels: the defaults, the table measured on GPUs, lookup.

Each kernel family has a *key* made of feature sizes only (GAE: the feature block ``BF``; PPO:
the column block ``BM``; QMIX: the embedding and hidden blocks ``BE``/``BH``), never the rollout
length T or the batch size, which stay runtime arguments (``do_not_specialize``): a new T or
minibatch size never recompiles and never changes which configuration runs. A configuration is
a dict of the kernel's tunable constexprs and ``num_warps``:

=================  ==========  ==============================  ===============================
family             key         tuned                           default (untuned)
=================  ==========  ==============================  ===============================
``gae_fwd/_bwd``   ``BF{bf}``  ``BT`` (steps per tile), warps  2048-element tiles, 4 warps
``ppo_clip``       ``BM{bm}``  ``BN`` (rows per program),      4096-element tiles, 4 warps
``ppo_clip_bwd``,              warps
``ppo_critic``,
``ppo_critic_bwd``
``qmix_fwd/_bwd``  ``BE-BH``   ``BB`` (samples per program),   32 samples, 4 warps
                               warps
=================  ==========  ==============================  ===============================

**Why a measured table and not ``@triton.autotune``.** torch 2.13's ``wrap_triton`` and
``triton_op`` accept autotuned kernels with ``configs``, ``key``, ``restore_value`` and
``reset_to_zero`` only, no pre/post hooks (``torch/_higher_order_ops/triton_kernel_wrap.py``;
read, not run: tracing a Triton kernel needs a GPU driver, and torch 2.11 on the GPU machine is
unverified). For these kernels a table is the better fit anyway:

- *Reproducible numbers.* Block sizes change the order of the scan and of every reduction, so
  two configurations give results a few ulps apart. An autotuner picks by timing, which differs
  from process to process: a resumed training run (``fastmarl train --resume``, which must be
  exact) could continue with other bits than the run it resumes. A table gives every process
  on one GPU architecture the same configuration.
- *State across launches.* The PPO forward's programs meet through tickets and a persistent
  workspace (:mod:`fastmarl.ops.ppo.triton`); an autotuner re-runs a kernel to time it, which
  would need ``reset_to_zero``/``restore_value`` on that state, and Inductor re-tunes
  autotuned user kernels at compile time with its own benchmark, so eager and compiled calls
  could run different configurations.
- *No first-call cost.* Tuning at the first call costs every process seconds of compiles,
  inside the first training step or a CUDA-graph warm-up; the table costs one dict lookup.

The space below is small on purpose (at most 9 configurations a family) so that
``bench/tune_kernels.py`` (run by ``bench/gpu_session.sh``) compiles and times all of them in
about a minute on one GPU; it checks every configuration's output against the default one,
keeps the fastest correct one per key, and writes the table (``fastmarl/ops/tuned_configs.py``,
committed per GPU architecture). Until a GPU has measured a key, its default applies: the
defaults were chosen without a GPU (register budget reasoning in the kernel files).

``FASTMARL_TUNED_CONFIGS=/path/table.json`` loads a table written by the sweep over the
committed one (the GPU session uses it to benchmark the configurations it has just tuned).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from fastmarl.ops.tuned_configs import TABLE

__all__ = ["FAMILIES", "arch_of", "candidates", "default_config", "key_of", "launch_config", "override", "reload"]

# The kernels of each family share one configuration; ``key_of`` builds its key from sizes.
FAMILIES = ("gae_fwd", "gae_bwd", "ppo_clip", "ppo_clip_bwd", "ppo_critic", "ppo_critic_bwd",
            "qmix_fwd", "qmix_bwd")

# The defaults, chosen without a GPU by register budget:
# - GAE: elements per [BT, BF] tile. Five operand tiles plus the scan's two live in registers:
#   2048 fp32 elements over 4 warps is 16 per thread per tile.
# - PPO: elements per [BN, BM] tile; the loss kernel holds ~6 such tiles.
# - QMIX: samples per program. tl.dot needs M >= 16; 32 gives 128 programs at B=4096, about
#   one per SM of an H100 (132): a 64-sample tile would leave half of them idle there.
# - 4 warps: 16-32 fp32 elements a thread and tile at these sizes.
GAE_TILE_ELEMENTS = 2048
PPO_TILE_ELEMENTS = 4096
QMIX_BLOCK_B = 32
NUM_WARPS = 4


def _tile_rows(tile_elements: int, block: int) -> int:
    # Rows of a [rows, block] tile of ``tile_elements``; 16 at least (the smallest tl.dot /
    # associative-scan tile the kernels are written for).
    return max(16, tile_elements // block)


def key_of(family: str, **blocks: int) -> str:
    """The table key of ``family`` for its feature blocks (``bf=``, ``bm=`` or ``be=, bh=``)."""
    if family.startswith("gae"):
        return f"BF{blocks['bf']}"
    if family.startswith("ppo"):
        return f"BM{blocks['bm']}"
    if family.startswith("qmix"):
        return f"BE{blocks['be']}-BH{blocks['bh']}"
    raise ValueError(f"unknown kernel family {family!r}; expected one of {list(FAMILIES)}")


def default_config(family: str, **blocks: int) -> dict[str, int]:
    """The configuration a key gets until a GPU has measured it."""
    if family.startswith("gae"):
        return {"BT": _tile_rows(GAE_TILE_ELEMENTS, blocks["bf"]), "num_warps": NUM_WARPS}
    if family.startswith("ppo"):
        return {"BN": _tile_rows(PPO_TILE_ELEMENTS, blocks["bm"]), "num_warps": NUM_WARPS}
    if family.startswith("qmix"):
        return {"BB": QMIX_BLOCK_B, "num_warps": NUM_WARPS}
    raise ValueError(f"unknown kernel family {family!r}; expected one of {list(FAMILIES)}")


def candidates(family: str, **blocks: int) -> list[dict[str, int]]:
    """The configurations the sweep times for a key: the default first, then the rest.

    - GAE: tiles of 1024, 2048 or 4096 elements x 2, 4 or 8 warps. Each program scans one row
      serially in tiles; a longer tile means fewer serial steps but more registers a thread.
    - PPO: tiles of 1024 to 8192 elements x 4 or 8 warps: the rows a program owns set how many
      partials the merge reads and how much work a program has.
    - QMIX: 16, 32 or 64 samples x 2, 4 or 8 warps: the tl.dot M dimension, against the
      [BB, BE] tiles per agent that stay live in registers.
    """
    if family.startswith("gae"):
        space = [{"BT": _tile_rows(t, blocks["bf"]), "num_warps": w}
                 for t in (1024, 2048, 4096) for w in (2, 4, 8)]
    elif family.startswith("ppo"):
        space = [{"BN": _tile_rows(t, blocks["bm"]), "num_warps": w}
                 for t in (1024, 2048, 4096, 8192) for w in (4, 8)]
    elif family.startswith("qmix"):
        space = [{"BB": b, "num_warps": w} for b in (16, 32, 64) for w in (2, 4, 8)]
    else:
        raise ValueError(f"unknown kernel family {family!r}; expected one of {list(FAMILIES)}")
    default = default_config(family, **blocks)
    unique = [default]
    for config in space:
        if config not in unique:
            unique.append(config)
    return unique


_ARCH: dict[tuple[str, int | None], str] = {}
_RESOLVED: dict[tuple, dict[str, int]] = {}
_TABLE: dict | None = None
_OVERRIDES: dict[str, dict[str, int]] = {}


def arch_of(device: torch.device) -> str:
    """``sm_<major><minor>`` of a CUDA device, else the device type (``cpu`` for the
    interpreter, which takes the defaults)."""
    key = (device.type, device.index)
    arch = _ARCH.get(key)
    if arch is None:
        if device.type == "cuda":
            major, minor = torch.cuda.get_device_capability(device)
            arch = f"sm_{major}{minor}"
        else:
            arch = device.type
        _ARCH[key] = arch
    return arch


def _table() -> dict:
    global _TABLE
    if _TABLE is None:
        table = {arch: {fam: dict(entries) for fam, entries in fams.items()} for arch, fams in TABLE.items()}
        path = os.environ.get("FASTMARL_TUNED_CONFIGS")
        if path:
            try:
                loaded = json.loads(open(path).read())["table"]
            except (OSError, KeyError, ValueError) as err:
                raise RuntimeError(f"FASTMARL_TUNED_CONFIGS={path}: not a table written by "
                                   f"bench/tune_kernels.py ({err})") from err
            for arch, fams in loaded.items():
                for fam, entries in fams.items():
                    table.setdefault(arch, {}).setdefault(fam, {}).update(entries)
        _TABLE = table
    return _TABLE


def reload() -> None:
    """Forget the resolved configurations (after changing ``FASTMARL_TUNED_CONFIGS``)."""
    global _TABLE
    _TABLE = None
    _RESOLVED.clear()


@contextmanager
def override(configs: dict[str, dict[str, int]]) -> Iterator[None]:
    """Inside the block, ``configs[family]`` is the configuration of every key of that family
    (missing entries from the key's default). For the sweep, which times each candidate
    through the launchers, and for checks that cross tiles and programs at small shapes."""
    unknown = [f for f in configs if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown kernel families {unknown}; expected names from {list(FAMILIES)}")
    previous = dict(_OVERRIDES)
    _OVERRIDES.update(configs)
    try:
        yield
    finally:
        _OVERRIDES.clear()
        _OVERRIDES.update(previous)


def launch_config(family: str, device: torch.device, **blocks: int) -> dict[str, int]:
    """The configuration of ``family`` for these feature blocks on ``device``: the measured
    one when the table has this architecture and key, else the default. A dict lookup after
    the first call (launchers call it on every launch)."""
    if _OVERRIDES and family in _OVERRIDES:
        return {**default_config(family, **blocks), **_OVERRIDES[family]}
    cache_key = (family, device.type, device.index, *sorted(blocks.items()))
    config = _RESOLVED.get(cache_key)
    if config is None:
        measured = _table().get(arch_of(device), {}).get(family, {}).get(key_of(family, **blocks))
        config = dict(measured) if measured else default_config(family, **blocks)
        _RESOLVED[cache_key] = config
    return config

