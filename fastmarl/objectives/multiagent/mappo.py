"""Drop-in ``MAPPOLoss`` and ``IPPOLoss``: TorchRL's classes on fastmarl's fused PPO ops.

TorchRL's ``MAPPOLoss``/``IPPOLoss`` are ``ClipPPOLoss`` with ``MultiAgentGAE`` as default
value estimator, per-agent advantage standardisation (``normalize_advantage_exclude_dims=(-2,)``)
and an optional ``ValueNorm`` on the critic loss. fastmarl's keep all of that (constructor,
keys, ``value_norm`` hook) and run :class:`fastmarl.objectives.ClipPPOLoss`'s fused ``forward``;
the default estimator is fastmarl's ``MultiAgentGAE``.
"""

from __future__ import annotations

from torchrl.objectives.multiagent.mappo import IPPOLoss as _TorchRLIPPOLoss
from torchrl.objectives.multiagent.mappo import MAPPOLoss as _TorchRLMAPPOLoss

from fastmarl.objectives.ppo import ClipPPOLoss, init_with_stats_group

__all__ = ["MAPPOLoss", "IPPOLoss"]


class MAPPOLoss(ClipPPOLoss, _TorchRLMAPPOLoss):
    __doc__ = (
        "fastmarl's :class:`torchrl.objectives.multiagent.MAPPOLoss` (fused surrogate and critic "
        "ops, fastmarl's MultiAgentGAE by default; ``advantage_stats_group`` as "
        ":class:`fastmarl.objectives.ClipPPOLoss`).\n\n" + (_TorchRLMAPPOLoss.__doc__ or "")
    )
    __init__ = init_with_stats_group(_TorchRLMAPPOLoss)


class IPPOLoss(MAPPOLoss, _TorchRLIPPOLoss):
    __doc__ = (
        "fastmarl's :class:`torchrl.objectives.multiagent.IPPOLoss` (fused surrogate and critic "
        "ops, fastmarl's MultiAgentGAE by default; ``advantage_stats_group`` as "
        ":class:`fastmarl.objectives.ClipPPOLoss`).\n\n" + (_TorchRLIPPOLoss.__doc__ or "")
    )
    __init__ = init_with_stats_group(_TorchRLIPPOLoss)
