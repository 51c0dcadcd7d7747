"""Drop-in ``QMixer`` and ``VDNMixer``: TorchRL's mixers, QMIX's as one fused op.

:class:`QMixer` subclasses TorchRL's: same constructor (plus ``hypernet_layers`` and
``hypernet_embed``), same parameter names (a TorchRL ``QMixer`` state_dict loads into it), same
``[*B, n, 1]``, ``[*B, *state_shape]`` → ``[*B, 1]`` contract, same initialisation (one-layer
hypernetworks draw TorchRL's parameters from the same seed). Only the math changes:
:func:`fastmarl.ops.qmix.mix`, one ``torch.ops.fastmarl.qmix`` call on CUDA (the Triton
kernels) instead of five Linears, two ``abs``, two ``bmm`` and an ELU, each with its own launch
and intermediates; on the CPU the same fused computation in plain torch.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchrl.modules.models.multiagent import Mixer
from torchrl.modules.models.multiagent import QMixer as _TorchRLQMixer
from torchrl.modules.models.multiagent import VDNMixer as _TorchRLVDNMixer

from fastmarl import _compat
from fastmarl.modules.models.multiagent_mlp import MultiAgentMLP
from fastmarl.ops import qmix as qmix_ops
from fastmarl.ops.dtypes import FLOAT_DTYPES
from fastmarl.ops.qmix import QMixParams

__all__ = ["MultiAgentMLP", "QMixer", "VDNMixer"]


def _positive_int(value) -> bool:
    try:
        return operator.index(value) >= 1
    except TypeError:
        return False


class QMixer(_TorchRLQMixer):
    """QMIX mixer (Rashid et al. 2018), TorchRL's :class:`~torchrl.modules.models.multiagent.QMixer`
    computed by one fused op (a Triton kernel on CUDA, a torch kernel elsewhere).

    Mixes the agents' chosen Q-values ``[*B, n_agents, 1]`` into ``Q_tot`` ``[*B, 1]`` through a
    monotonic mixing network whose weights hypernetworks compute from the global state
    ``[*B, *state_shape]`` (flattened to ``prod(state_shape)`` features, as TorchRL does).

    Args:
        state_shape (tuple or torch.Size): the state's shape, without leading batch dims.
        mixing_embed_dim (int): width ``E`` of the mixing layer.
        n_agents (int): number of agents.
        device (str or torch.device, optional): device of the parameters (TorchRL requires it;
            here it defaults to torch's default device).

    Keyword Args:
        hypernet_layers (int): 1 (default) for PyMARL's/TorchRL's one-layer hypernetworks
            ``hyper_w_1``, ``hyper_w_final``; 2 for EPyMARL's and JaxMARL's
            ``Linear(S, H) → ReLU → Linear(H, ·)``, parameters named ``hyper_w_1.0.weight``
            etc. as in EPyMARL. ``hyper_b_1`` and ``V`` are the same either way.
        hypernet_embed (int): hidden width ``H`` of two-layer hypernetworks (default 64, as
            EPyMARL); ignored for one layer.

    Examples:
        >>> import torch
        >>> from fastmarl.modules import QMixer
        >>> mixer = QMixer(state_shape=(37,), mixing_embed_dim=32, n_agents=8, device="cpu")
        >>> mixer(torch.randn(64, 8, 1), torch.randn(64, 37)).shape
        torch.Size([64, 1])
    """

    def __init__(
        self,
        state_shape: tuple[int, ...] | torch.Size,
        mixing_embed_dim: int,
        n_agents: int,
        device=None,
        *,
        hypernet_layers: int = 1,
        hypernet_embed: int = 64,
    ):
        if hypernet_layers not in (1, 2):
            raise ValueError(f"hypernet_layers must be 1 or 2, got {hypernet_layers!r}")
        if int(hypernet_embed) < 1:
            raise ValueError(f"hypernet_embed must be a positive integer, got {hypernet_embed!r}")
        for name, value in (("mixing_embed_dim", mixing_embed_dim), ("n_agents", n_agents)):
            if not _positive_int(value):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if (isinstance(state_shape, (str, bytes)) or not isinstance(state_shape, Sequence)
                or not state_shape or not all(_positive_int(s) for s in state_shape)):
            raise ValueError(
                f"state_shape must be a tuple of positive integers (the state's shape without "
                f"batch dims, e.g. (37,) or (64, 64, 3)), got {state_shape!r}"
            )
        if hypernet_layers == 1:
            # TorchRL's own constructor: its layers, names and initialisation, in its order.
            super().__init__(state_shape, mixing_embed_dim, n_agents, device)
        else:
            self._init_two_layer(state_shape, mixing_embed_dim, n_agents, device, int(hypernet_embed))
        self.hypernet_layers = hypernet_layers
        self.hypernet_embed = int(hypernet_embed) if hypernet_layers == 2 else None
        # The Linears in QMixParams order, for mixer_params(): 8 against 20 us a call on the
        # CPU machine through nn.Module.__getattr__ and Sequential indexing.
        w1, wf = self.hyper_w_1, self.hyper_w_final
        second = ()
        if hypernet_layers == 2:
            w1, wf, second = w1[0], wf[0], (w1[2], wf[2])
        self._linears = (w1, wf, self.hyper_b_1, self.V[0], self.V[2], *second)

    def _init_two_layer(self, state_shape, mixing_embed_dim, n_agents, device, hidden):
        # EPyMARL's QMixer with hypernet_layers=2; hyper_b_1 and V as TorchRL's.
        Mixer.__init__(self, needs_state=True, state_shape=state_shape, n_agents=n_agents,
                       device=device)
        self.embed_dim = mixing_embed_dim
        self.state_dim = int(math.prod(state_shape))
        self.hyper_w_1 = nn.Sequential(
            nn.Linear(self.state_dim, hidden, device=device),
            nn.ReLU(),
            nn.Linear(hidden, self.embed_dim * self.n_agents, device=device),
        )
        self.hyper_w_final = nn.Sequential(
            nn.Linear(self.state_dim, hidden, device=device),
            nn.ReLU(),
            nn.Linear(hidden, self.embed_dim, device=device),
        )
        self.hyper_b_1 = nn.Linear(self.state_dim, self.embed_dim, device=device)
        self.V = nn.Sequential(
            nn.Linear(self.state_dim, self.embed_dim, device=device),
            nn.ReLU(),
            nn.Linear(self.embed_dim, 1, device=device),
        )

    def extra_repr(self) -> str:
        return (f"state_shape={tuple(self.state_shape)}, mixing_embed_dim={self.embed_dim}, "
                f"n_agents={self.n_agents}, hypernet_layers={self.hypernet_layers}"
                + (f", hypernet_embed={self.hypernet_embed}" if self.hypernet_layers == 2 else ""))

    def mixer_params(self) -> QMixParams:
        """The tensors the op takes, named (:class:`fastmarl.ops.qmix.QMixParams`).

        Read at call time, so parameters swapped in by ``TensorDict.to_module`` (TorchRL's
        losses, target networks) are the ones used. The Linear submodules themselves are looked
        up once, at construction: replacing one afterwards (``mixer.V = ...``) is not supported.
        """
        tensors = []
        for linear in self._linears:
            tensors += _compat.linear_tensors(linear)
        return QMixParams(*tensors)

    def forward(self, *inputs: Tensor) -> Tensor:
        """``Q_tot`` ``[*B, 1]`` of ``chosen_action_value`` ``[*B, n_agents, 1]`` and ``state``
        ``[*B, *state_shape]``; bad input raises an error naming the argument and shape."""
        if len(inputs) != 2:
            # TorchRL's message first (code may match on it), then what is expected.
            raise ValueError(
                f"Mixer that needs state was passed more than 2 inputs: QMixer takes "
                f"(chosen_action_value, state), got {len(inputs)} input(s)"
            )
        chosen_action_value, state = inputs
        return self.fused_forward(chosen_action_value, state, self.mixer_params())

    def fused_forward(self, chosen_action_value: Tensor, state: Tensor, params: QMixParams) -> Tensor:
        """:meth:`forward` with the parameters given (:meth:`mixer_params` order): how
        :class:`fastmarl.objectives.QMixerLoss` calls the mixer with the online or target
        parameters it holds, without swapping them into the module."""
        q, flat_state = self._flatten(chosen_action_value, state, params.hyper_w1_weight)
        q_tot = qmix_ops.mix(q, flat_state, params)  # [B, 1]
        return q_tot if chosen_action_value.ndim == 3 else q_tot.view(*chosen_action_value.shape[:-2], 1)

    def mix(self, chosen_action_value: Tensor, state: Tensor) -> Tensor:
        """TorchRL's ``QMixer.mix`` as one op call: ``[*B, n, 1]``, ``[*B, *state_shape]`` → ``[*B, 1]``."""
        q_tot = qmix_ops.mix(
            chosen_action_value.reshape(-1, self.n_agents),
            state.reshape(-1, self.state_dim),
            self.mixer_params(),
        )
        return q_tot.view(*chosen_action_value.shape[:-2], 1)

    def _flatten(self, chosen_action_value, state, weight: Tensor) -> tuple[Tensor, Tensor]:
        # q [B, n] and state [B, S] of valid inputs; the checks that pass cost ~5 us, the
        # messages are only built for an input that fails them.
        state_shape = tuple(self.state_shape)
        if not (
            isinstance(chosen_action_value, Tensor) and isinstance(state, Tensor)
            and chosen_action_value.dtype in FLOAT_DTYPES and state.dtype in FLOAT_DTYPES
            and chosen_action_value.shape[-2:] == (self.n_agents, 1)
            and state.shape == (*chosen_action_value.shape[:-2], *state_shape)
        ):
            self._raise_bad_input(chosen_action_value, state)
        q = chosen_action_value.reshape(-1, self.n_agents)
        flat_state = state.reshape(-1, self.state_dim)
        if (q.shape[0] != flat_state.shape[0] or q.shape[0] == 0
                or state.device != chosen_action_value.device or weight.device != state.device):
            self._raise_bad_input(chosen_action_value, state)
        return q, flat_state

    def _raise_bad_input(self, chosen_action_value, state) -> None:
        for name, x in (("chosen_action_value", chosen_action_value), ("state", state)):
            if not isinstance(x, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
            if x.dtype not in FLOAT_DTYPES:
                raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
        n = self.n_agents
        state_shape = tuple(self.state_shape)
        q_shape = tuple(chosen_action_value.shape)
        # TorchRL's sentences first, in its order, where TorchRL checks the same thing (code may
        # match on them).
        batch_shape = q_shape[:-2]
        expected_state = (*batch_shape, *state_shape)
        k = len(state_shape)
        if state.ndim < k or tuple(state.shape[state.ndim - k:]) != state_shape:
            raise ValueError(
                f"Mixer network expected state with ending shape {self.state_shape}, but got state "
                f"shape {state.shape}: state has shape {tuple(state.shape)}, expected "
                f"[*B, *state_shape] = {expected_state} (state_shape={state_shape})"
            )
        if q_shape[-2:] != (n, 1):
            raise ValueError(
                f"Mixer network expected chosen_action_value with last 2 dimensions {(n, 1)}, but "
                f"got {chosen_action_value.shape}: chosen_action_value has shape {q_shape}, expected "
                f"[*B, n_agents, 1] with n_agents={n}: [*B, {n}, 1]"
            )
        if tuple(state.shape[:state.ndim - k]) != batch_shape:
            raise ValueError(
                f"state has shape {tuple(state.shape)}, expected [*B, *state_shape] = "
                f"{expected_state}: its batch dims must be chosen_action_value's {batch_shape}"
            )
        if chosen_action_value.numel() == 0:
            raise ValueError(
                f"chosen_action_value of shape {q_shape} is empty: the mixer needs at least one sample"
            )
        if state.device != chosen_action_value.device:
            raise ValueError(
                f"state is on {state.device} but chosen_action_value is on "
                f"{chosen_action_value.device}: both must be on the mixer's device"
            )
        raise ValueError(
            f"chosen_action_value is on {chosen_action_value.device} but the mixer's parameters "
            f"are on {self.hyper_b_1.weight.device}"
        )


class VDNMixer(_TorchRLVDNMixer):
    """VDN mixer (Sunehag et al. 2017): TorchRL's :class:`~torchrl.modules.models.multiagent.VDNMixer`,
    the sum of the agents' Q-values ``[*B, n_agents, 1]`` → ``[*B, 1]``. One ``sum`` needs no
    kernel; this subclass exists so that the import swap covers it, and makes ``device``
    optional like :class:`QMixer`."""

    def __init__(self, n_agents: int, device=None):
        if not _positive_int(n_agents):
            raise ValueError(f"n_agents must be a positive integer, got {n_agents!r}")
        super().__init__(n_agents=n_agents, device=device)
