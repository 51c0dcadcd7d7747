"""MAPPO / IPPO on VMAS: the seed tutorial's training loop, timed phase by phase.

The code is the tutorial's (VMAS Navigation, MultiAgentMLP 2x256 Tanh with shared parameters,
TanhNormal policy, ``ClipPPOLoss`` with ``normalize_advantage=False`` and GAE from
``make_value_estimator``), with two changes: ``backend`` picks where ``MultiAgentMLP``,
``ClipPPOLoss`` and ``ValueEstimators`` are imported from, and each phase is timed. MAPPO's
critic is centralised, IPPO's per agent. With ``compile``/``cudagraph`` the minibatch step is
:class:`fastmarl.UpdateStep` (phases ``compile``, its first calls, and ``update``); otherwise
the tutorial's loop, timed as loss forward, backward and optimizer. Under torchrun each rank runs
this loop on its own environments with the gradients averaged over the ranks
(:mod:`fastmarl.training.distributed`).
"""

from __future__ import annotations

import importlib
import time

import torch
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.collectors import Collector
from torchrl.data.replay_buffers import ReplayBuffer
from torchrl.data.replay_buffers.samplers import SamplerWithoutReplacement
from torchrl.data.replay_buffers.storages import LazyTensorStorage
from torchrl.envs import RewardSum, TransformedEnv
from torchrl.envs.libs.vmas import VmasEnv
from torchrl.modules import ProbabilisticActor, TanhNormal

from fastmarl.training.config import TrainConfig


def loss_imports(backend: str):
    """``(ClipPPOLoss, ValueEstimators)`` from ``fastmarl.objectives`` or ``torchrl.objectives``."""
    module = importlib.import_module(f"{backend}.objectives")
    return module.ClipPPOLoss, module.ValueEstimators


def mlp_import(backend: str):
    """``MultiAgentMLP`` from ``fastmarl.modules`` (no per-call ``to_module``) or ``torchrl.modules``."""
    return importlib.import_module(f"{backend}.modules").MultiAgentMLP


def make_update_step(config: TrainConfig, loss, optim, loss_keys, after_step=None, process_group=None):
    """``fastmarl.UpdateStep`` for ``--compile`` / ``--cudagraph``, else ``None`` (the tutorial's loop).
    Under torchrun, ``process_group`` averages the gradients over the ranks inside the step."""
    if not (config.compile or config.cudagraph):
        return None
    from fastmarl.update import UpdateStep

    return UpdateStep(loss, optim, loss_keys=loss_keys, max_grad_norm=config.max_grad_norm,
                      compile=config.compile, cudagraph=config.cudagraph, after_step=after_step,
                      process_group=process_group)


def average_gradients_eagerly(timer, params, dist) -> None:
    """The tutorial's loop under torchrun: the gradients averaged over the ranks between the
    backward and the clipping (phase ``allreduce``); nothing without ``dist``."""
    if dist is None:
        return
    from fastmarl.distributed import average_gradients

    with timer("allreduce"):
        average_gradients([p.grad for p in params if p.grad is not None], dist.group)


def share_networks(module, dist) -> None:
    """Under torchrun: every rank's parameters and floating buffers of ``module`` overwritten
    with rank 0's (as DDP does at construction; the same seed already built the same ones)."""
    if dist is None:
        return
    from fastmarl.distributed import broadcast_tensors

    tensors = [*module.parameters(), *(b for b in module.buffers() if b.is_floating_point())]
    broadcast_tensors(tensors, dist.group)


def seed_rank_stream(config: TrainConfig, dist) -> None:
    """Rank r > 0 draws actions and minibatches from a stream of its own (rank 0 keeps the
    single-process one): called once its networks are built from ``--seed``."""
    if dist is not None and dist.rank > 0:
        from fastmarl.training.distributed import rank_seed

        torch.manual_seed(rank_seed(config.seed, dist.rank))


def env_seed(config: TrainConfig, dist) -> int:
    """The VMAS seed of this rank: ``--seed + rank``."""
    return config.seed + (0 if dist is None else dist.rank)


def make_optim(config: TrainConfig, params, lr: float) -> torch.optim.Optimizer:
    """The tutorial's ``Adam(params, lr)``; with ``--compile``/``--cudagraph`` the flags each
    device wants (:func:`fastmarl.make_optimizer`: ``capturable`` for capture on CUDA)."""
    if not (config.compile or config.cudagraph):
        return torch.optim.Adam(params, lr)
    from fastmarl.update import make_optimizer

    return make_optimizer(params, lr, device=config.device, compile=config.compile, cudagraph=config.cudagraph)


def timed_update(timer, update, subdata):
    """One ``UpdateStep`` call, timed as ``compile`` while it compiles or captures, else ``update``."""
    with timer("compile" if update.calls < update.warmup_calls else "update"):
        return update(subdata)


def make_env(config: TrainConfig, continuous_actions: bool, seed: int | None = None) -> TransformedEnv:
    env = VmasEnv(
        scenario=config.scenario, num_envs=config.num_envs, continuous_actions=continuous_actions,
        max_steps=config.max_steps, device=config.device, n_agents=config.n_agents,
        seed=config.seed if seed is None else seed,
    )
    return TransformedEnv(env, RewardSum(in_keys=[env.reward_key], out_keys=[("agents", "episode_reward")]))


def make_networks(config: TrainConfig, env) -> tuple[ProbabilisticActor, TensorDictModule]:
    n_obs = env.observation_spec["agents", "observation"].shape[-1]
    # The tutorial's env.action_spec.shape[-1] is no longer the per-agent action size in
    # TorchRL 0.14 (VMAS then asserts on the action shape); the full action spec's is.
    n_actions = env.full_action_spec[env.action_key].shape[-1]
    MultiAgentMLP = mlp_import(config.backend)
    policy_net = nn.Sequential(
        MultiAgentMLP(
            n_agent_inputs=n_obs, n_agent_outputs=2 * n_actions, n_agents=env.n_agents, centralised=False,
            share_params=config.share_params, device=config.device, depth=config.depth,
            num_cells=config.num_cells, activation_class=nn.Tanh,
        ),
        NormalParamExtractor(),
    )
    policy = ProbabilisticActor(
        module=TensorDictModule(policy_net, in_keys=[("agents", "observation")],
                                out_keys=[("agents", "loc"), ("agents", "scale")]),
        spec=env.full_action_spec_unbatched,
        in_keys=[("agents", "loc"), ("agents", "scale")],
        out_keys=[env.action_key],
        distribution_class=TanhNormal,
        distribution_kwargs={
            "low": env.full_action_spec_unbatched[env.action_key].space.low,
            "high": env.full_action_spec_unbatched[env.action_key].space.high,
        },
        return_log_prob=True,
        log_prob_key=("agents", "sample_log_prob"),
    )
    critic_net = MultiAgentMLP(
        n_agent_inputs=n_obs, n_agent_outputs=1, n_agents=env.n_agents, centralised=config.algo == "mappo",
        share_params=config.share_params, device=config.device, depth=config.depth, num_cells=config.num_cells,
        activation_class=nn.Tanh,
    )
    critic = TensorDictModule(critic_net, in_keys=[("agents", "observation")], out_keys=[("agents", "state_value")])
    return policy, critic


class CollectingTrainer:
    """The collector plumbing both trainers share: ``start`` before the first ``step``."""

    config: TrainConfig
    env: TransformedEnv
    policy: nn.Module
    _collector = None
    # Checkpointed parts that differ between the ranks of a torchrun launch (the rest is shared).
    PER_RANK: tuple[str, ...] = ()
    dist = None  # a fastmarl.training.distributed.DistContext under torchrun

    def start(self, remaining_iters: int) -> None:
        self._collector = Collector(
            self.env, self.policy, device=self.config.device, storing_device=self.config.device,
            frames_per_batch=self.config.frames_per_batch,
            total_frames=self.config.frames_per_batch * remaining_iters,
            # Every iteration starts from fresh resets, so that the environments' state at an
            # iteration boundary is a function of the RNG state alone: a checkpoint (weights,
            # optimiser, buffers, RNG) then resumes exactly. With the default frames_per_batch =
            # num_envs x max_steps every episode ends at the boundary anyway.
            reset_at_each_iter=True,
            # The MLP policies need no InitTracker; opt out of TorchRL 0.15's auto-registration.
            auto_register_policy_transforms=False,
        )
        self._batches = iter(self._collector)

    def collect(self):
        with self.timer("collection"):
            return next(self._batches)

    def close(self) -> None:
        if self._collector is not None:
            self._collector.shutdown()

    def _checkpointed(self) -> dict:
        """Name -> object with ``state_dict``/``load_state_dict``: what a checkpoint holds."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {name: part.state_dict() for name, part in self._checkpointed().items()}

    def rank_state_dict(self) -> dict:
        """The parts of ``state_dict()`` that are this rank's own (``PER_RANK``)."""
        return {name: part.state_dict() for name, part in self._checkpointed().items() if name in self.PER_RANK}

    def iteration_metrics(self, rewards, episodes, losses: list[float]) -> tuple[float, int, list[float], int]:
        """``(mean episode reward, episodes, losses, frames)`` of an iteration from this rank's
        finished episodes' rewards, episode count and mean losses; under torchrun, of all ranks
        (every rank's episodes, the losses averaged over the ranks: one all-reduce)."""
        if self.dist is None or self.dist.world_size == 1:
            reward_mean = rewards.mean().item() if rewards.numel() else float("nan")
            return reward_mean, int(episodes.item()), losses, self.config.frames_per_batch
        world = self.dist.world_size
        reward_sum, count, episodes, *losses = self.dist.all_reduce_sum(
            [rewards.double().sum().item(), rewards.numel(), episodes.item(), *losses])
        reward_mean = reward_sum / count if count else float("nan")
        return reward_mean, int(episodes), [x / world for x in losses], world * self.config.frames_per_batch

    def load_state_dict(self, state: dict) -> None:
        """Load a ``state_dict()``; a ``KeyError`` names the first missing part."""
        parts = self._checkpointed()
        missing = [name for name in parts if name not in state]
        if missing:
            raise KeyError(f"no state for {missing}")
        for name, part in parts.items():
            part.load_state_dict(state[name])


LOSS_KEYS = ("loss_objective", "loss_critic", "loss_entropy")


class PPOTrainer(CollectingTrainer):
    """State of one MAPPO/IPPO run; ``step()`` runs one iteration and returns its metrics.

    ``dist`` (a :class:`fastmarl.training.distributed.DistContext`) makes it one rank of a
    data-parallel run (see that module for what is per rank and what is shared)."""

    PER_RANK = ("sampler",)

    def __init__(self, config: TrainConfig, timer, dist=None):
        self.config = config
        self.timer = timer
        self.dist = dist
        torch.manual_seed(config.seed)
        self.env = make_env(config, continuous_actions=config.continuous_actions, seed=env_seed(config, dist))
        self.policy, self.critic = make_networks(config, self.env)
        ClipPPOLoss, ValueEstimators = loss_imports(config.backend)
        # --normalize-advantage: per agent (MAPPOLoss's exclusion); under torchrun with the
        # statistics of every rank's minibatch (fastmarl's loss; the CLI refuses TorchRL's there).
        stats_group = {"advantage_stats_group": dist.group} if (
            dist is not None and config.normalize_advantage and config.backend == "fastmarl") else {}
        self.loss = ClipPPOLoss(
            actor_network=self.policy, critic_network=self.critic, clip_epsilon=config.clip_epsilon,
            entropy_coeff=config.entropy_coeff, normalize_advantage=config.normalize_advantage,
            normalize_advantage_exclude_dims=(-2,), **stats_group,
        )
        share_networks(self.loss, dist)
        seed_rank_stream(config, dist)
        self.loss.set_keys(
            reward=self.env.reward_key, action=self.env.action_key, sample_log_prob=("agents", "sample_log_prob"),
            value=("agents", "state_value"), done=("agents", "done"), terminated=("agents", "terminated"),
        )
        self.loss.make_value_estimator(ValueEstimators.GAE, gamma=config.gamma, lmbda=config.lmbda)
        self.gae = self.loss.value_estimator
        self.optim = make_optim(config, self.loss.parameters(), config.lr)
        self.buffer = ReplayBuffer(
            storage=LazyTensorStorage(config.frames_per_batch, device=config.device),
            sampler=SamplerWithoutReplacement(), batch_size=config.minibatch,
        )
        self.update = make_update_step(config, self.loss, self.optim, list(LOSS_KEYS),
                                       process_group=None if dist is None else dist.group)

    def _checkpointed(self) -> dict:
        # The sampler holds the permutation drawn after the last minibatch (it draws the next
        # one as soon as one runs out): the next iteration's first epoch uses it.
        return {"policy": self.policy, "critic": self.critic, "optim": self.optim, "sampler": self.buffer.sampler}

    def step(self) -> dict:
        config, timer = self.config, self.timer
        start = time.perf_counter()
        data = self.collect()
        # The tutorial's layout: done/terminated expanded (as views) to the per-agent reward shape.
        reward_shape = data.get_item_shape(("next", self.env.reward_key))
        for key in ("done", "terminated"):
            data.set(("next", "agents", key), data.get(("next", key)).unsqueeze(-1).expand(reward_shape))
        with timer("gae"), torch.no_grad():
            self.gae(data, params=self.loss.critic_network_params,
                     target_params=self.loss.target_critic_network_params)
        self.buffer.extend(data.reshape(-1))
        loss_history = []
        for _ in range(config.epochs):
            for _ in range(config.frames_per_batch // config.minibatch):
                with timer("sample"):
                    subdata = self.buffer.sample()
                if self.update is not None:
                    metrics = timed_update(timer, self.update, subdata)
                    values = [metrics[key] for key in LOSS_KEYS]
                else:
                    with timer("loss_forward"):
                        losses = self.loss(subdata)
                        total = losses["loss_objective"] + losses["loss_critic"] + losses["loss_entropy"]
                    with timer("backward"):
                        total.backward()
                    average_gradients_eagerly(timer, self.loss.parameters(), self.dist)
                    values = (losses["loss_objective"].detach(), losses["loss_critic"].detach(),
                              losses["loss_entropy"].detach())
                    with timer("optimizer"):
                        torch.nn.utils.clip_grad_norm_(self.loss.parameters(), config.max_grad_norm)
                        self.optim.step()
                        self.optim.zero_grad()
                loss_history.append(torch.stack([v.float() for v in values]))
        # [steps, 3] on the host in one copy an iteration, not one a minibatch.
        loss_history = torch.stack(loss_history).cpu()
        means, first = loss_history.mean(0), loss_history[0]
        self._collector.update_policy_weights_()
        done = data.get(("next", "agents", "done"))
        rewards = data.get(("next", "agents", "episode_reward"))[done]
        reward_mean, episodes, losses, frames = self.iteration_metrics(
            rewards, data.get(("next", "done")).sum(), [*means.tolist(), *first.tolist()])
        seconds = time.perf_counter() - start
        return {
            "episode_reward_mean": reward_mean,
            "episodes": episodes,
            "loss_objective": losses[0], "loss_critic": losses[1], "loss_entropy": losses[2],
            "first_loss_objective": losses[3], "first_loss_critic": losses[4], "first_loss_entropy": losses[5],
            "frames": frames, "seconds": seconds, "fps": frames / seconds,
        }
