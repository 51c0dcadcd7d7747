"""Configuration of ``fastmarl train``: the seed tutorial's defaults, validated before any work.

Imports nothing heavy (no torch): the command line builds its ``--help`` from ``TrainConfig``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

ALGOS = ("mappo", "ippo", "qmix")
BACKENDS = ("fastmarl", "torchrl")
# Written to config.json for the reader, derived from other fields: ignored when read back.
DERIVED = ("continuous_actions", "num_envs")


class RunError(ValueError):
    """A run that cannot start: an invalid option or a checkpoint that cannot be resumed.

    Always raised before anything is written; the command line prints it as one line,
    ``fastmarl train: error: <message>``, and exits with status 2.
    """


@dataclass
class TrainConfig:
    """One training run. Defaults are the seed tutorial's (MAPPO/IPPO on VMAS Navigation).

    PPO fields follow the tutorial; QMIX fields apply to ``algo="qmix"`` only.
    """

    algo: str = "mappo"
    """``mappo`` (centralised critic), ``ippo`` (per-agent critic) or ``qmix``."""
    backend: str = "fastmarl"
    """Where the losses and value estimator come from: ``fastmarl`` or ``torchrl``. Nothing else
    differs between the two, so a comparison measures the library, not the script."""
    scenario: str = "navigation"
    """A VMAS scenario name."""
    n_agents: int = 3
    iters: int = 10
    """Collection + update iterations."""
    frames_per_batch: int = 6_000
    """Frames collected per iteration: ``num_envs`` vectorised environments x ``max_steps``."""
    max_steps: int = 100
    """Episode length; also the rollout length per iteration for PPO."""
    epochs: int = 30
    """PPO epochs over each batch."""
    minibatch: int = 400
    lr: float = 3e-4
    max_grad_norm: float = 1.0
    clip_epsilon: float = 0.2
    gamma: float = 0.99
    lmbda: float = 0.9
    entropy_coeff: float = 1e-4
    normalize_advantage: bool = False
    """Standardise the advantage per agent (TorchRL's ``normalize_advantage=True`` with
    ``normalize_advantage_exclude_dims=(-2,)``, MAPPOLoss's default); the tutorial does not.
    Under torchrun, with the statistics of every rank's minibatch together."""
    num_cells: int = 256
    depth: int = 2
    share_params: bool = True
    """Share the policy's (and critic's) parameters across agents, as the tutorial does."""
    device: str = "cpu"
    """Training device (``cpu``, ``cuda``, ``cuda:1``); VMAS runs there too."""
    seed: int = 0
    compile: bool = False
    """Compile the whole update step (loss, backward, clipping, Adam) with ``torch.compile``
    through :class:`fastmarl.UpdateStep`; its first call is timed as the ``compile`` phase."""
    cudagraph: bool = False
    """Capture the update step in a CUDA graph (``UpdateStep(cudagraph=True)``; CUDA only)."""
    # QMIX
    buffer_size: int = 100_000
    """QMIX replay buffer capacity in frames (894 bytes a frame on Navigation with 3 agents)."""
    save_buffer: bool = True
    """Keep the QMIX replay buffer's filled rows in ``checkpoint.pt`` so that ``--resume``
    continues exactly (~54 MB after the default 10 iterations; ``--no-save-buffer`` to skip)."""
    qmix_lr: float = 1e-3
    """Adam learning rate of QMIX (``lr`` is PPO's)."""
    qmix_updates_per_iter: int = 200
    """Gradient steps per iteration for QMIX (one minibatch each). Measured on Navigation, 3
    agents, 10 iterations, seed 0: 20 steps at lr 3e-4 and τ 0.005 left the mean episode
    reward at -4.3 from -0.7 (ε-greedy had decayed, the Q-network had not learnt); 200 steps
    at lr 1e-3 and τ 0.01 took it to 2.06."""
    eps_start: float = 1.0
    eps_end: float = 0.05
    eps_anneal_frames: int = 30_000
    """Frames over which ε-greedy exploration anneals linearly from ``eps_start`` to ``eps_end``
    (5 default iterations), whatever ``iters`` is: a short run explores (a 2-iteration run
    collects at ε = 1.0 and 0.81) rather than acting greedily on an untrained Q-network, and a
    resumed run keeps the schedule it started with."""
    target_tau: float = 0.01
    """Soft update rate of the QMIX target networks."""
    mixing_embed_dim: int = 32
    extra: dict = field(default_factory=dict)

    @property
    def num_envs(self) -> int:
        return self.frames_per_batch // self.max_steps

    @property
    def continuous_actions(self) -> bool:
        """PPO samples continuous actions (TanhNormal); QMIX picks discrete ones."""
        return self.algo != "qmix"

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data.update({name: getattr(self, name) for name in DERIVED})
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        if not isinstance(data, dict):
            raise RunError(f"a configuration must be a dict of fields, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k not in DERIVED}
        unknown = sorted(set(data) - names)
        if unknown:
            raise RunError(f"unknown configuration field(s) {unknown}")
        return cls(**data)


def validate(config: TrainConfig) -> None:
    """Raise ``RunError`` (a ``ValueError``) with a clear message for any option that cannot work.

    Runs before an environment is made or a network built.
    """
    try:
        _validate(config)
    except RunError:
        raise
    except ValueError as err:
        raise RunError(str(err)) from None


def _validate(config: TrainConfig) -> None:
    import vmas

    if config.algo not in ALGOS:
        raise ValueError(f"--algo must be one of {list(ALGOS)}, got {config.algo!r}")
    if config.backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {list(BACKENDS)}, got {config.backend!r}")
    known = sorted(set(vmas.scenarios) | set(vmas.mpe_scenarios) | set(vmas.debug_scenarios))
    if config.scenario not in known:
        raise ValueError(f"--scenario {config.scenario!r} is not a VMAS scenario; known: {', '.join(known)}")
    positive = {
        "--n-agents": config.n_agents, "--iters": config.iters, "--frames-per-batch": config.frames_per_batch,
        "--max-steps": config.max_steps, "--epochs": config.epochs, "--minibatch": config.minibatch,
        "--num-cells": config.num_cells, "--depth": config.depth, "--buffer-size": config.buffer_size,
        "--qmix-updates-per-iter": config.qmix_updates_per_iter, "--eps-anneal-frames": config.eps_anneal_frames,
    }
    for name, value in positive.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if config.frames_per_batch % config.max_steps:
        raise ValueError(
            f"--frames-per-batch {config.frames_per_batch} is not divisible by --max-steps "
            f"{config.max_steps}: each iteration collects num_envs x max_steps frames"
        )
    if config.algo != "qmix" and config.minibatch > config.frames_per_batch:
        raise ValueError(
            f"--minibatch {config.minibatch} is larger than --frames-per-batch {config.frames_per_batch}"
        )
    for name, value in {"--lr": config.lr, "--qmix-lr": config.qmix_lr,
                        "--max-grad-norm": config.max_grad_norm}.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")
    for name, value in {"--gamma": config.gamma, "--lmbda": config.lmbda, "--eps-start": config.eps_start,
                        "--eps-end": config.eps_end, "--target-tau": config.target_tau}.items():
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must lie in [0, 1], got {value}")
    if config.eps_end > config.eps_start:
        raise ValueError(f"--eps-end {config.eps_end} must not exceed --eps-start {config.eps_start} (ε anneals down)")
    if not 0 < config.clip_epsilon < 1:
        raise ValueError(f"--clip-epsilon must lie in (0, 1), got {config.clip_epsilon}")
    if config.entropy_coeff < 0:
        raise ValueError(f"--entropy-coeff must be non-negative, got {config.entropy_coeff}")
    if config.cudagraph and not config.device.startswith("cuda"):
        raise ValueError(f"--cudagraph needs --device cuda (CUDA graphs capture CUDA work), got --device {config.device}")
    if config.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda asked for, but no CUDA device is available")
    elif config.device != "cpu":
        raise ValueError(f"--device must be cpu or cuda[:N], got {config.device!r}")
