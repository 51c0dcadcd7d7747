"""Drop-in ``MultiAgentMLP``: TorchRL's, computed from its parameters without ``to_module``.

TorchRL's :class:`~torchrl.modules.MultiAgentMLP` keeps its parameters in a ``TensorDictParams``
(``params``, per agent stacked on a leading dim when not shared) and a parameter-less copy of
the MLP (``_empty_net``); every forward swaps the parameters into that copy with
``params.to_module(...)`` (and ``torch.vmap`` over agents when they are not shared). On the CPU
machine a shared 2x8 MLP's forward on 4x3 inputs took 65.7 us against 17.3 us here (median of
3,000 interleaved calls, 1 thread): ~50 us of swap per call; under ``torch.compile`` the swap
breaks the graph, four times per tutorial update step ("getattr() on nn.Module with pending
mutation").

This subclass has the same constructor, parameters, ``state_dict`` and outputs and computes the
MLP straight from the parameters, read at call time (so a loss's or a target network's
``to_module`` swap still takes effect):

- shared parameters: ``F.linear`` per layer, TorchRL's ops (bit-identical outputs);
- per-agent parameters: one ``baddbmm`` per layer over the stacked weights ``[A, out, in]``
  with the agents first, ``[A, N, features]`` (the centralised first layer, whose input is the
  same for every agent, is one ``addmm`` against ``[A * out, A * in]``). Chosen over
  ``torch.func.functional_call`` under ``torch.vmap`` (also swap-free) by measurement on the
  CPU machine (1 thread, other sessions running, providers interleaved), per-agent,
  decentralised, 18 -> 2x256 Tanh -> 4, forward + backward: at 400x3 medians TorchRL
  11.4 ms, ``functional_call``/``vmap`` 11.4 ms, ``baddbmm`` 10.1 ms (per-round 1.12x over
  TorchRL, 1.15x over ``vmap``); at 4096x4 162.7 / 145.9 / 144.0 ms
  (``python bench/interleaved.py mlp-per-agent:tutorial mlp-per-agent:benchmarl --threads 1``).

Networks outside that (layers other than ``nn.Linear`` and element-wise activations: dropout,
norms, lazy or noisy layers, a shaped ``n_agent_outputs``, ``use_td_params=False``) run
TorchRL's forward unchanged.
"""

from __future__ import annotations

import functools
import inspect
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchrl.modules.models.multiagent import MultiAgentMLP as _TorchRLMultiAgentMLP

from fastmarl import _compat

__all__ = ["MLPParamsSwap", "MultiAgentMLP"]

# Parameter-free modules that act element-wise, so that applying them to [A, N, F] or [N, A, F]
# is the same as TorchRL's per-agent call.
_ELEMENTWISE = (
    nn.Tanh, nn.ReLU, nn.ELU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Softplus, nn.Mish,
    nn.Hardtanh, nn.ReLU6, nn.SELU, nn.CELU, nn.Softsign, nn.Tanhshrink, nn.Hardswish,
    nn.Hardsigmoid, nn.LogSigmoid, nn.Identity,
)


def _plan(mlp) -> tuple | None:
    """``(layers, keys)`` of the fast path: layers as ``("linear", has_bias)`` or
    ``("act", module)``, keys the ``(layer, "weight"/"bias")`` leaves in call order; ``None``
    when the network needs TorchRL's forward."""
    net = _compat.mlp_template(mlp)
    if (not mlp.use_td_params or not mlp.initialized or not isinstance(net, nn.Sequential)
            or _compat.reshapes_output(net) or not _compat.is_plain_tensordict(mlp.params)):
        return None
    layers, keys = [], []
    for index, module in net.named_children():
        if type(module) is nn.Linear:
            has_bias = module.bias is not None
            layers.append(("linear", has_bias))
            keys.append((index, "weight"))
            if has_bias:
                keys.append((index, "bias"))
        elif type(module) in _ELEMENTWISE:
            layers.append(("act", module))
        else:
            return None
    expected = set(keys)
    found = {tuple(k) for k in mlp.params.keys(True, True)}
    if found != expected:
        return None
    return tuple(layers), tuple(keys)


class MultiAgentMLP(_TorchRLMultiAgentMLP):
    __doc__ = (
        "fastmarl's :class:`torchrl.modules.MultiAgentMLP`: same constructor, parameters, "
        "``state_dict`` and outputs, computed from the stacked parameters without the per-call "
        "``to_module`` swap (see :mod:`fastmarl.modules.models.multiagent_mlp`).\n\n"
        + (_TorchRLMultiAgentMLP.__doc__ or "")
    )

    @functools.wraps(_TorchRLMultiAgentMLP.__init__)
    def __init__(self, *args, **kwargs):
        bound = _INIT_SIGNATURE.bind(None, *args, **kwargs).arguments
        for name in ("n_agents", "n_agent_outputs"):
            value = bound.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        depth = bound.get("depth")
        if isinstance(depth, int) and depth < 0:
            raise ValueError(f"depth must be a non-negative integer (the number of hidden layers), got {depth}")
        super().__init__(*args, **kwargs)
        # In __dict__, not as submodules: the state_dict and parameters stay TorchRL's.
        self.__dict__["_fastmarl_plan"] = _plan(self)

    def _check_input(self, x) -> None:
        # What TorchRL's forward would fail on deep inside (a matmul, an IndexError), named here;
        # TorchRL's own check of the agent dim follows (_pre_forward_check, its message).
        if not isinstance(x, Tensor):
            raise TypeError(f"MultiAgentMLP input must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"MultiAgentMLP input must be a floating-point tensor, got {x.dtype}")
        features = self.n_agent_inputs
        if x.ndim < 2 or (features is not None and x.shape[-1] != features):
            raise ValueError(
                f"MultiAgentMLP input has shape {tuple(x.shape)}, expected [*B, n_agents, "
                f"n_agent_inputs] = [*B, {self.n_agents}, {features if features is not None else 'F'}]"
            )

    def forward(self, *inputs: Tensor) -> Tensor:
        x = torch.cat([*inputs], -1) if len(inputs) > 1 else inputs[0]
        self._check_input(x)
        plan = self.__dict__.get("_fastmarl_plan")
        if plan is None:
            return super().forward(x)
        layers, keys = plan
        x = _compat.pre_forward_check(self, x)  # [*B, A, F] checked; centralised: [*B, A * F]
        leaves = iter(_compat.param_leaves(self.params, keys))
        A = self.n_agents
        # Under torch.compile the bias is added apart from the GEMM, so that Inductor fuses it
        # into the activation: on the CPU its addmm first copies the broadcast bias into the
        # output, a pass over [N, 256] per layer (8 ms of a 200 ms PPO step at 4096x4 on the
        # CPU machine); on GPUs Inductor unfuses addmm itself. Eager keeps TorchRL's F.linear.
        unfused = torch.compiler.is_compiling()
        if self.share_params:
            for kind, arg in layers:
                if kind == "linear":
                    weight, bias = next(leaves), next(leaves) if arg else None
                    if unfused:
                        x = x @ weight.t() if bias is None else x @ weight.t() + bias
                    else:
                        x = F.linear(x, weight, bias)
                else:
                    x = _activation(arg, x, unfused)
            if self.centralized:  # [*B, out] -> [*B, A, out], the same output for every agent
                x = x.unsqueeze(-2).expand(*x.shape[:-1], A, x.shape[-1])
            return x
        batch = x.shape[:-1] if self.centralized else x.shape[:-2]
        N = math.prod(batch)
        first = True
        for kind, arg in layers:
            if kind != "linear":
                x = _activation(arg, x, unfused)
                continue
            weight = next(leaves)  # [A, out, in]
            bias = next(leaves) if arg else None  # [A, out]
            out_features = weight.shape[1]
            if first and self.centralized:
                # The same input for every agent: one GEMM against all agents' weights.
                flat = x.reshape(N, x.shape[-1])
                w = weight.reshape(A * out_features, weight.shape[-1])
                if bias is None:
                    x = flat @ w.t()
                elif unfused:
                    x = flat @ w.t() + bias.reshape(-1)
                else:
                    x = torch.addmm(bias.reshape(-1), flat, w.t())
                x = x.view(N, A, out_features).transpose(0, 1)  # [A, N, out]
            else:
                if first:
                    x = x.reshape(N, A, x.shape[-1]).transpose(0, 1)  # [A, N, in]
                wt = weight.transpose(1, 2)  # [A, in, out]
                if bias is None:
                    x = torch.bmm(x, wt)
                elif unfused:
                    x = torch.bmm(x, wt) + bias.unsqueeze(1)
                else:
                    x = torch.baddbmm(bias.unsqueeze(1), x, wt)
            first = False
        # [A, N, out] -> [*B, A, out] (a view)
        return x.reshape(A, *batch, x.shape[-1]).movedim(0, -2)


def _activation(module: nn.Module, x: Tensor, compiling: bool) -> Tensor:
    # Under torch.compile on the CPU, tanh as 2 sigmoid(2x) - 1: Inductor's CPU tanh is a scalar
    # libm call per element, 12.4 ms for [16384, 256] fp32 on one thread of the CPU machine,
    # against 1.2 ms for the sigmoid form (vectorised); the two differ by at most 1.8e-7 there,
    # compiled code reassociates sums at that level anyway. Eager keeps TorchRL's nn.Tanh (its
    # bits); on GPUs tanh is one instruction either way.
    if compiling and type(module) is nn.Tanh and x.device.type == "cpu":
        return 2 * torch.sigmoid(2 * x) - 1
    return module(x)


_INIT_SIGNATURE = inspect.signature(_TorchRLMultiAgentMLP.__init__)
MultiAgentMLP.__init__.__signature__ = _INIT_SIGNATURE


class MLPParamsSwap:
    """``params.to_module(network)`` for a network whose parameters all live in fastmarl
    :class:`MultiAgentMLP` modules: :meth:`bind` points each MLP's ``TensorDictParams`` at the
    matching sub-TensorDict of ``params``, :meth:`restore` puts the old ones back.

    TorchRL's swap walks every submodule and copies the ``TensorDictParams`` it replaces (a
    new module under ``torch.compile``: a graph break each time, 18 per QMIX step); this sets
    one attribute per MLP, which ``torch.compile`` traces. Explicit calls rather than a
    ``with`` block: dynamo cannot enter a user-defined context manager made outside the
    compiled region.

        swap = MLPParamsSwap.build(net, params)
        saved = swap.bind(other_params)
        try:
            net(td)
        finally:
            swap.restore(saved)
    """

    def __init__(self, slots):
        self.slots = slots  # ((mlp, path of its params in the parameter TensorDict), ...)

    @classmethod
    def build(cls, network: nn.Module, params) -> MLPParamsSwap | None:
        """The swapper for ``network`` and a parameter TensorDict shaped like
        ``TensorDict.from_module(network)``, or ``None`` when some parameter or buffer of the
        network is not inside a fastmarl ``MultiAgentMLP`` (then use ``to_module``)."""
        slots, owned = [], []
        for name, module in network.named_modules():
            if isinstance(module, MultiAgentMLP) and module.__dict__.get("_fastmarl_plan") is not None:
                prefix = tuple(name.split(".")) if name else ()
                slots.append((module, (*prefix, "params")))
                owned.append((*prefix, "params"))
        if not slots:
            return None
        for key in params.keys(True, True):
            key = key if isinstance(key, tuple) else (key,)
            if not any(key[:len(path)] == path for path in owned):
                return None
        return cls(tuple(slots))

    def bind(self, params) -> tuple:
        saved = tuple(_compat.bound_params(mlp.params) for mlp, _ in self.slots)
        for mlp, path in self.slots:
            _compat.bind_params(mlp.params, _compat.sub_tensordict(params, path))
        return saved

    def restore(self, saved: tuple) -> None:
        for (mlp, _), td in zip(self.slots, saved):
            _compat.bind_params(mlp.params, td)
