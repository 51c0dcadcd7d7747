"""QMIX on a discrete-action VMAS scenario, timed phase by phase.

Per-agent Q-network (MultiAgentMLP with shared parameters) -> ``QValueModule`` (greedy action,
chosen Q-value) -> ε-greedy exploration for collection; a ``QMixer`` over the concatenated
agent observations as global state; ``QMixerLoss`` with target networks (soft updates), TD(0)
targets and a replay buffer. The team reward is the agents' mean reward. ``backend`` picks where
``MultiAgentMLP``, ``QMixer`` and ``QMixerLoss`` come from (fastmarl's fuse the mixer into one op).
With ``compile``/``cudagraph`` each gradient step, target update included, is one
:class:`fastmarl.UpdateStep` call.
"""

from __future__ import annotations

import importlib
import time

import torch
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.data.replay_buffers import ReplayBuffer
from torchrl.data.replay_buffers.storages import LazyTensorStorage
from torchrl.modules import EGreedyModule, QValueModule, SafeSequential
from torchrl.objectives import SoftUpdate

from fastmarl.training.config import TrainConfig
from fastmarl.training.ppo import (
    CollectingTrainer,
    average_gradients_eagerly,
    env_seed,
    make_env,
    make_optim,
    make_update_step,
    mlp_import,
    seed_rank_stream,
    share_networks,
    timed_update,
)


def qmix_imports(backend: str):
    """``(QMixer, QMixerLoss, ValueEstimators)`` from fastmarl or TorchRL."""
    modules = importlib.import_module(f"{backend}.modules")
    objectives = importlib.import_module(f"{backend}.objectives")
    return modules.QMixer, objectives.QMixerLoss, objectives.ValueEstimators


def add_team_signals(data, n_agents: int):
    """The mixer's global state (all agents' observations) and the team reward (their mean)."""
    for prefix in ((), ("next",)):
        obs = data.get((*prefix, "agents", "observation"))
        data.set((*prefix, "state"), obs.flatten(-2))
    data.set(("next", "reward"), data.get(("next", "agents", "reward")).mean(-2))
    return data


class ReplayRows:
    """A replay buffer's filled rows and write cursor as a ``state_dict`` of plain tensors
    (``torch.load(weights_only=True)`` reads it). ``ReplayBuffer.state_dict()`` would hold the
    whole preallocated storage: 100,000 rows at the default ``buffer_size`` where a 10-iteration
    run fills 60,000. The sampler (uniform, drawn from the global RNG) has no state."""

    def __init__(self, buffer: ReplayBuffer, device):
        self.buffer = buffer
        self.device = device

    def state_dict(self) -> dict:
        # clone(): the rows are a view of the preallocated storage, and torch.save writes a
        # view's whole underlying storage (90 MB after one iteration instead of 5.4 MB).
        rows = self.buffer[: len(self.buffer)].clone() if len(self.buffer) else None
        return {"rows": rows.to_dict() if rows is not None else {}, "length": len(self.buffer),
                "writer": self.buffer.writer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        from tensordict import TensorDict

        self.buffer.empty()
        if state["length"]:
            rows = TensorDict(state["rows"], batch_size=[state["length"]])
            self.buffer.extend(rows.to(self.device))
        self.buffer.writer.load_state_dict(state["writer"])


class QMIXTrainer(CollectingTrainer):
    """State of one QMIX run; ``step()`` collects one batch and runs the updates.

    Under torchrun (``dist``) each rank collects into its own replay buffer and samples its own
    minibatches; the gradients are averaged over the ranks before clipping, so the Q-network,
    mixer, targets (soft-updated from the same parameters) and ε (annealed by each rank's own
    frames, the same count everywhere) stay the same on every rank."""

    PER_RANK = ("buffer",)

    def __init__(self, config: TrainConfig, timer, dist=None):
        self.config = config
        self.timer = timer
        self.dist = dist
        torch.manual_seed(config.seed)
        self.env = make_env(config, continuous_actions=config.continuous_actions, seed=env_seed(config, dist))
        env = self.env
        n_obs = env.observation_spec["agents", "observation"].shape[-1]
        action_spec = env.full_action_spec_unbatched[env.action_key]
        n_actions = action_spec.space.n
        MultiAgentMLP = mlp_import(config.backend)
        q_net = TensorDictModule(
            MultiAgentMLP(n_agent_inputs=n_obs, n_agent_outputs=n_actions, n_agents=env.n_agents,
                          centralised=False, share_params=config.share_params, device=config.device,
                          depth=config.depth, num_cells=config.num_cells, activation_class=nn.Tanh),
            in_keys=[("agents", "observation")], out_keys=[("agents", "action_value")],
        )
        value_module = QValueModule(
            action_value_key=("agents", "action_value"),
            out_keys=[env.action_key, ("agents", "action_value"), ("agents", "chosen_action_value")],
            spec=env.full_action_spec_unbatched, action_space=None,
        )
        self.qnet = SafeSequential(q_net, value_module)
        self.explore = EGreedyModule(
            eps_init=config.eps_start, eps_end=config.eps_end, annealing_num_steps=config.eps_anneal_frames,
            action_key=env.action_key, spec=env.full_action_spec_unbatched,
        )
        self.policy = TensorDictSequential(self.qnet, self.explore)
        QMixer, QMixerLoss, ValueEstimators = qmix_imports(config.backend)
        self.mixer = TensorDictModule(
            QMixer(state_shape=(env.n_agents * n_obs,), mixing_embed_dim=config.mixing_embed_dim,
                   n_agents=env.n_agents, device=config.device),
            in_keys=[("agents", "chosen_action_value"), "state"], out_keys=["chosen_action_value"],
        )
        self.loss = QMixerLoss(self.qnet, self.mixer, delay_value=True, action_space=action_spec)
        self.loss.set_keys(
            action_value=("agents", "action_value"), local_value=("agents", "chosen_action_value"),
            global_value="chosen_action_value", action=env.action_key,
        )
        self.loss.make_value_estimator(ValueEstimators.TD0, gamma=config.gamma)
        share_networks(self.loss, dist)  # online and target networks alike
        seed_rank_stream(config, dist)
        self.target_updater = SoftUpdate(self.loss, tau=config.target_tau)
        self.optim = make_optim(config, self.loss.parameters(), config.qmix_lr)
        self.buffer = ReplayBuffer(storage=LazyTensorStorage(config.buffer_size, device=config.device),
                                   batch_size=config.minibatch)
        self.update = make_update_step(config, self.loss, self.optim, ["loss"], after_step=self.target_updater.step,
                                       process_group=None if dist is None else dist.group)

    def _checkpointed(self) -> dict:
        parts = {"loss": self.loss, "optim": self.optim, "explore": self.explore}
        if self.config.save_buffer:
            parts["buffer"] = ReplayRows(self.buffer, self.config.device)
        return parts

    def step(self) -> dict:
        config, timer = self.config, self.timer
        start = time.perf_counter()
        data = self.collect()
        add_team_signals(data, self.env.n_agents)
        # Only what QMixerLoss reads: 894 of the 1,132 bytes a frame on Navigation with 3 agents.
        self.buffer.extend(data.select(*self.loss.in_keys).reshape(-1))
        # The ε this batch was collected with (the metric), then anneal by the frames collected.
        epsilon = float(self.explore.eps)
        self.explore.step(data.numel())
        losses = []
        for _ in range(config.qmix_updates_per_iter):
            with timer("sample"):
                subdata = self.buffer.sample()
            if self.update is not None:
                loss = timed_update(timer, self.update, subdata)["loss"]
            else:
                with timer("loss_forward"):
                    loss = self.loss(subdata)["loss"]
                with timer("backward"):
                    loss.backward()
                average_gradients_eagerly(timer, self.loss.parameters(), self.dist)
                loss = loss.detach()
                with timer("optimizer"):
                    torch.nn.utils.clip_grad_norm_(self.loss.parameters(), config.max_grad_norm)
                    self.optim.step()
                    self.optim.zero_grad()
                    self.target_updater.step()
            losses.append(loss.float())
        # One device-to-host copy an iteration, not one an update.
        losses = torch.stack(losses).cpu()
        self._collector.update_policy_weights_()
        done = data.get(("next", "done"))
        rewards = data.get(("next", "agents", "episode_reward")).mean(-2)[done]
        reward_mean, episodes, (loss_mean, first_loss), frames = self.iteration_metrics(
            rewards, done.sum(), [losses.mean().item(), losses[0].item()])
        seconds = time.perf_counter() - start
        return {
            "episode_reward_mean": reward_mean,
            "episodes": episodes,
            "loss": loss_mean, "first_loss": first_loss,
            "epsilon": epsilon,
            "frames": frames, "seconds": seconds, "fps": frames / seconds,
        }
