"""BenchMARL on fastmarl (and on TorchRL 0.14): change one name.

>>> from fastmarl.integrations.benchmarl import FastMappoConfig   # was MappoConfig
>>> algorithm_config = FastMappoConfig.get_from_yaml()            # BenchMARL's mappo.yaml

Import this module before anything of BenchMARL: on TorchRL 0.14 ``import benchmarl`` fails
until the collector shim below is applied.

or on the command line, BenchMARL's hydra interface with three more algorithm names::

    python -m fastmarl.integrations.benchmarl algorithm=fastmappo task=vmas/balance

``FastMappoConfig``, ``FastIppoConfig``, ``FastQmixConfig`` and ``FastVdnConfig`` are BenchMARL's
config dataclasses with the same fields (plus optional ones, see
:mod:`fastmarl.integrations.benchmarl.algorithms`) whose algorithms build fastmarl's
``ClipPPOLoss``/``GAE`` and ``QMixerLoss``/``QMixer``/``VDNMixer``. Importing this module
registers them in BenchMARL's ``algorithm_config_registry`` and, when hydra is installed, in
hydra's ``ConfigStore`` (group ``algorithm``) as ``fastmappo``, ``fastippo``, ``fastqmix`` and
``fastvdn`` (their defaults: BenchMARL's yaml of the parent algorithm), with schemas
``fast*_config`` as BenchMARL stores its own.

BenchMARL 1.5.2 declares ``torchrl<0.12``; importing this module first applies the two shims it
needs on TorchRL 0.14 (:mod:`fastmarl.integrations.benchmarl.torchrl_shims`), so BenchMARL's own
configs run here too. Install (keeps your torch, torchrl and tensordict; BenchMARL's pins would
replace them)::

    pip install "fastmarl[benchmarl]"          # hydra-core; from a checkout: pip install -e ".[benchmarl]"
    pip install --no-deps benchmarl==1.5.2
"""

from __future__ import annotations

import importlib.util
import warnings

INSTALL_HINT = (
    'pip install "fastmarl[benchmarl]" (in a fastmarl checkout: pip install -e ".[benchmarl]"), then '
    "pip install --no-deps benchmarl==1.5.2 (--no-deps keeps your torch, torchrl and tensordict, "
    "which BenchMARL's own pins would replace)"
)
# The release the shims and the Fast* algorithms' copies of BenchMARL code were written against.
TESTED_BENCHMARL = "1.5.2"


def _benchmarl_installed() -> bool:
    try:
        return importlib.util.find_spec("benchmarl") is not None
    except ImportError:  # a parent package or an import hook refused it
        return False


if not _benchmarl_installed():
    # name=__name__: this module is what failed to import. `python -m` then reports the message
    # in one line ("Error while finding module specification ... (ImportError: ...)") instead of
    # a traceback.
    raise ImportError(
        "fastmarl.integrations.benchmarl needs BenchMARL, which is not installed. Install it with: "
        + INSTALL_HINT,
        name=__name__,
    )

from fastmarl.integrations.benchmarl import torchrl_shims  # noqa: E402

torchrl_shims.alias_sync_data_collector()  # before BenchMARL imports torchrl.collectors

import benchmarl  # noqa: E402
import benchmarl.algorithms  # noqa: E402

torchrl_shims.lenient_qvalue_module()

if benchmarl.__version__.split(".")[:2] != TESTED_BENCHMARL.split(".")[:2]:
    warnings.warn(
        f"fastmarl.integrations.benchmarl was written against BenchMARL {TESTED_BENCHMARL}; "
        f"found {benchmarl.__version__}. Install it with: {INSTALL_HINT}",
        stacklevel=2,
    )

from fastmarl.integrations.benchmarl.algorithms import (  # noqa: E402
    FastIppo,
    FastIppoConfig,
    FastMappo,
    FastMappoConfig,
    FastQmix,
    FastQmixConfig,
    FastVdn,
    FastVdnConfig,
)
from fastmarl.integrations.benchmarl.experiment import FastExperiment  # noqa: E402

# The names under which the configs are registered (BenchMARL's registry, hydra's ConfigStore).
FAST_ALGORITHMS = {
    "fastmappo": FastMappoConfig,
    "fastippo": FastIppoConfig,
    "fastqmix": FastQmixConfig,
    "fastvdn": FastVdnConfig,
}


def _register() -> None:
    benchmarl.algorithms.algorithm_config_registry.update(FAST_ALGORITHMS)
    if importlib.util.find_spec("hydra") is None:
        return
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, config_class in FAST_ALGORITHMS.items():
        # As benchmarl/__init__.py stores its schemas ("mappo_config"), so that a user's yaml
        # can start with `defaults: [fastmappo_config, _self_]`...
        store.store(name=f"{name}_config", group="algorithm", node=config_class)
        # ...and what `algorithm=fastmappo` selects: BenchMARL's mappo.yaml values.
        store.store(name=name, group="algorithm", node=config_class.get_from_yaml())


_register()

__all__ = [
    "FAST_ALGORITHMS",
    "FastExperiment",
    "FastIppo",
    "FastIppoConfig",
    "FastMappo",
    "FastMappoConfig",
    "FastQmix",
    "FastQmixConfig",
    "FastVdn",
    "FastVdnConfig",
    "INSTALL_HINT",
]
