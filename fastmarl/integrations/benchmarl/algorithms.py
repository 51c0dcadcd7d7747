"""BenchMARL's MAPPO, IPPO, QMIX and VDN with fastmarl's losses, mixers and GAE.

Each ``Fast*`` algorithm is BenchMARL 1.5.2's class with only ``_get_loss`` (and, for the mixers,
``get_mixer``) rewritten, statement for statement, on fastmarl's drop-ins:

- MAPPO/IPPO: :class:`fastmarl.objectives.ClipPPOLoss` (fused surrogate and critic ops), whose
  ``make_value_estimator(ValueEstimators.GAE)`` builds :class:`fastmarl.objectives.GAE`;
- QMIX/VDN: :class:`fastmarl.objectives.QMixerLoss` with :class:`fastmarl.modules.QMixer` /
  :class:`fastmarl.modules.VDNMixer`.

Networks, specs, collection policies, batch processing and the training loop are BenchMARL's,
so with the options at their defaults a run trains to the same parameters as BenchMARL's own
config with the same seed (to float32 rounding; ``tests/test_benchmarl.py``).

Options (config fields, defaults keep BenchMARL's numbers):

- ``normalize_advantage_per_agent`` (MAPPO/IPPO): standardise the advantage per agent (mean and
  unbiased std over the minibatch, separately for each agent; TorchRL's
  ``normalize_advantage_exclude_dims=(-2,)``). BenchMARL passes ``normalize_advantage=False``
  (BenchMARL issue #255 asks for this).
- ``compile_update``: run each minibatch update (loss forward, backward, BenchMARL's gradient
  clipping per optimizer, Adam, target update) as one :class:`fastmarl.UpdateStep` with
  ``compile=True``. Needs :class:`fastmarl.integrations.benchmarl.FastExperiment`, which owns that
  loop (BenchMARL's ``Experiment`` runs its own), and a fastmarl that has ``UpdateStep``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Type

import benchmarl
from benchmarl.algorithms import Ippo, IppoConfig, Mappo, MappoConfig, Qmix, QmixConfig, Vdn, VdnConfig
from benchmarl.algorithms.common import Algorithm, AlgorithmConfig
from tensordict.nn import TensorDictModule
from torchrl.objectives import LossModule

from fastmarl.modules import QMixer, VDNMixer
from fastmarl.objectives import ClipPPOLoss, QMixerLoss, ValueEstimators

__all__ = [
    "FastIppo",
    "FastIppoConfig",
    "FastMappo",
    "FastMappoConfig",
    "FastQmix",
    "FastQmixConfig",
    "FastVdn",
    "FastVdnConfig",
    "BENCHMARL_ALGORITHM_CONF",
]

# BenchMARL's own algorithm yaml files (mappo.yaml, ...), which get_from_yaml() reads.
BENCHMARL_ALGORITHM_CONF = Path(benchmarl.__file__).resolve().parent / "conf" / "algorithm"

# The agent dim of a BenchMARL group's advantage: [*B, n_agents, 1] (B = minibatch, or
# sequences × time for RNN models).
_AGENT_DIM = -2


class _FastAlgorithm:
    """What fastmarl adds to every BenchMARL algorithm: the ``compile_update`` option."""

    # The loss entries whose sum is what BenchMARL's optimizers step on (after the algorithm's
    # process_loss_vals); UpdateStep backpropagates their sum once.
    update_loss_keys: Tuple[str, ...] = ()

    def __init__(self, *, compile_update: bool, **kwargs):
        super().__init__(**kwargs)
        self.compile_update = bool(compile_update)
        if self.compile_update:
            from fastmarl.integrations.benchmarl.experiment import check_compile_update

            check_compile_update(self.experiment)


class _FastPPO(_FastAlgorithm):
    # Mappo/Ippo.process_loss_vals folds loss_entropy into loss_objective; loss_critic has its own
    # optimizer.
    update_loss_keys = ("loss_objective", "loss_entropy", "loss_critic")

    def __init__(self, *, normalize_advantage_per_agent: bool, **kwargs):
        super().__init__(**kwargs)
        self.normalize_advantage_per_agent = bool(normalize_advantage_per_agent)

    def _get_loss(
        self, group: str, policy_for_loss: TensorDictModule, continuous: bool
    ) -> Tuple[LossModule, bool]:
        # BenchMARL 1.5.2's Mappo/Ippo._get_loss with fastmarl's ClipPPOLoss, plus the option.
        loss_module = ClipPPOLoss(
            actor=policy_for_loss,
            critic=self.get_critic(group),
            clip_epsilon=self.clip_epsilon,
            entropy_coeff=self.entropy_coef,
            critic_coeff=self.critic_coef,
            loss_critic_type=self.loss_critic_type,
            normalize_advantage=self.normalize_advantage_per_agent,
            normalize_advantage_exclude_dims=(_AGENT_DIM,) if self.normalize_advantage_per_agent else (),
        )
        loss_module.set_keys(
            reward=(group, "reward"),
            action=(group, "action"),
            done=(group, "done"),
            terminated=(group, "terminated"),
            advantage=(group, "advantage"),
            value_target=(group, "value_target"),
            value=(group, "state_value"),
            sample_log_prob=(group, "log_prob"),
        )
        loss_module.make_value_estimator(
            ValueEstimators.GAE, gamma=self.experiment_config.gamma, lmbda=self.lmbda
        )
        return loss_module, False


class _FastQMixer(_FastAlgorithm):
    update_loss_keys = ("loss",)

    def _get_loss(
        self, group: str, policy_for_loss: TensorDictModule, continuous: bool
    ) -> Tuple[LossModule, bool]:
        # BenchMARL 1.5.2's Qmix/Vdn._get_loss with fastmarl's QMixerLoss.
        if continuous:
            raise NotImplementedError(
                f"{type(self).__name__} is not compatible with continuous actions."
            )
        loss_module = QMixerLoss(
            policy_for_loss,
            self.get_mixer(group),
            delay_value=self.delay_value,
            loss_function=self.loss_function,
            action_space=self.action_spec[group, "action"],
        )
        loss_module.set_keys(
            reward="reward",
            action=(group, "action"),
            done="done",
            terminated="terminated",
            action_value=(group, "action_value"),
            local_value=(group, "chosen_action_value"),
            global_value="chosen_action_value",
            priority="td_error",
        )
        loss_module.make_value_estimator(ValueEstimators.TD0, gamma=self.experiment_config.gamma)
        return loss_module, True


class FastMappo(_FastPPO, Mappo):
    """BenchMARL's :class:`~benchmarl.algorithms.Mappo` on fastmarl's ``ClipPPOLoss`` and ``GAE``."""


class FastIppo(_FastPPO, Ippo):
    """BenchMARL's :class:`~benchmarl.algorithms.Ippo` on fastmarl's ``ClipPPOLoss`` and ``GAE``."""


class FastQmix(_FastQMixer, Qmix):
    """BenchMARL's :class:`~benchmarl.algorithms.Qmix` on fastmarl's ``QMixerLoss`` and ``QMixer``."""

    def get_mixer(self, group: str) -> TensorDictModule:
        # BenchMARL 1.5.2's Qmix.get_mixer with fastmarl's QMixer (same constructor and
        # initialisation, so the same seed draws the same mixer parameters).
        n_agents = len(self.group_map[group])
        if self.state_spec is not None:
            global_state_key = list(self.state_spec.keys(True, True))[0]
            state_shape = self.state_spec[global_state_key].shape
            in_keys = [(group, "chosen_action_value"), global_state_key]
        else:
            group_observation_keys = list(self.observation_spec[group].keys(True, True))
            if len(group_observation_keys) > 1:
                raise ValueError(
                    "QMIX called without a global state and multiple observation keys, currently the mixer"
                    "takes only one observation key, please raise an issue if you need this fauture."
                )
            group_observation_key = group_observation_keys[0]
            state_shape = self.observation_spec[group, group_observation_key].shape
            in_keys = [(group, "chosen_action_value"), (group, group_observation_key)]
        return TensorDictModule(
            module=QMixer(
                state_shape=state_shape,
                mixing_embed_dim=self.mixing_embed_dim,
                n_agents=n_agents,
                device=self.device,
            ),
            in_keys=in_keys,
            out_keys=["chosen_action_value"],
        )


class FastVdn(_FastQMixer, Vdn):
    """BenchMARL's :class:`~benchmarl.algorithms.Vdn` on fastmarl's ``QMixerLoss`` and ``VDNMixer``."""

    def get_mixer(self, group: str) -> TensorDictModule:
        # BenchMARL 1.5.2's Vdn.get_mixer with fastmarl's VDNMixer.
        return TensorDictModule(
            module=VDNMixer(n_agents=len(self.group_map[group]), device=self.device),
            in_keys=[(group, "chosen_action_value")],
            out_keys=["chosen_action_value"],
        )


class _FastConfig:
    """``get_from_yaml()`` reads BenchMARL's own yaml of the parent algorithm (``mappo.yaml`` for
    ``FastMappoConfig``), since BenchMARL's default would look for ``fastmappo.yaml``."""

    @classmethod
    def benchmarl_config(cls) -> Type[AlgorithmConfig]:
        """The BenchMARL config this one extends (``MappoConfig`` for ``FastMappoConfig``)."""
        return next(
            c for c in cls.__mro__[1:]
            if issubclass(c, AlgorithmConfig) and c.__module__.startswith("benchmarl.")
        )

    @classmethod
    def get_from_yaml(cls, path: Optional[str] = None):
        """Load the configuration from yaml.

        Args:
            path (str, optional): a yaml file; by default BenchMARL's own file of the parent
                algorithm (``benchmarl/conf/algorithm/mappo.yaml`` for ``FastMappoConfig``).
                The fastmarl options keep their defaults unless the file sets them.
        """
        if path is None:
            name = cls.benchmarl_config().associated_class().__name__.lower()
            path = str(BENCHMARL_ALGORITHM_CONF / f"{name}.yaml")
        return super().get_from_yaml(path)


@dataclass
class FastMappoConfig(_FastConfig, MappoConfig):
    """:class:`~benchmarl.algorithms.MappoConfig` for :class:`FastMappo`: BenchMARL's fields, plus

    Args:
        normalize_advantage_per_agent (bool): standardise the advantage per agent (default
            ``False``, BenchMARL's: no standardisation).
        compile_update (bool): run each minibatch update as one compiled ``fastmarl.UpdateStep``
            (default ``False``; needs :class:`~fastmarl.integrations.benchmarl.FastExperiment`).
    """

    normalize_advantage_per_agent: bool = False
    compile_update: bool = False

    @staticmethod
    def associated_class() -> Type[Algorithm]:
        return FastMappo


@dataclass
class FastIppoConfig(_FastConfig, IppoConfig):
    """:class:`~benchmarl.algorithms.IppoConfig` for :class:`FastIppo`; the extra fields are
    :class:`FastMappoConfig`'s."""

    normalize_advantage_per_agent: bool = False
    compile_update: bool = False

    @staticmethod
    def associated_class() -> Type[Algorithm]:
        return FastIppo


@dataclass
class FastQmixConfig(_FastConfig, QmixConfig):
    """:class:`~benchmarl.algorithms.QmixConfig` for :class:`FastQmix`, plus ``compile_update``
    (see :class:`FastMappoConfig`)."""

    compile_update: bool = False

    @staticmethod
    def associated_class() -> Type[Algorithm]:
        return FastQmix


@dataclass
class FastVdnConfig(_FastConfig, VdnConfig):
    """:class:`~benchmarl.algorithms.VdnConfig` for :class:`FastVdn`, plus ``compile_update``
    (see :class:`FastMappoConfig`)."""

    compile_update: bool = False

    @staticmethod
    def associated_class() -> Type[Algorithm]:
        return FastVdn
