"""The QMIX mixer's tensors, named (:class:`QMixParams`), and where they live in a module."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

__all__ = ["QMixParams", "MODULE_PARAM_NAMES"]


class QMixParams(NamedTuple):
    """The tensors the mixer computes with, for ``S`` state features, ``n`` agents, mixing width
    ``E`` and (two-layer hypernetworks) hidden width ``H``. The ops take them flattened
    (:meth:`flat`, the ``None`` second layers dropped), in this order."""

    hyper_w1_weight: Tensor  # [n*E, S], or [H, S]: hyper_w_1's (first) Linear
    hyper_w1_bias: Tensor
    hyper_wf_weight: Tensor  # [E, S], or [H, S]: hyper_w_final's (first) Linear
    hyper_wf_bias: Tensor
    hyper_b1_weight: Tensor  # [E, S]
    hyper_b1_bias: Tensor
    v1_weight: Tensor  # [E, S]: V(s)'s hidden Linear
    v1_bias: Tensor
    v2_weight: Tensor  # [1, E]: V(s)'s output Linear
    v2_bias: Tensor  # [1]
    hyper_w1_out_weight: Tensor | None = None  # [n*E, H]: hyper_w_1's second Linear (two-layer)
    hyper_w1_out_bias: Tensor | None = None
    hyper_wf_out_weight: Tensor | None = None  # [E, H]: hyper_w_final's second Linear
    hyper_wf_out_bias: Tensor | None = None

    @property
    def two_layer(self) -> bool:
        return self.hyper_w1_out_weight is not None

    @property
    def embed(self) -> int:
        return self.hyper_b1_weight.shape[0]

    @property
    def state_dim(self) -> int:
        return self.hyper_b1_weight.shape[1]

    @property
    def hidden(self) -> int:
        """``H`` of two-layer hypernetworks, 0 for one layer."""
        return self.hyper_w1_weight.shape[0] if self.two_layer else 0

    @property
    def state_weights(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The four Linears that read the state, weights then biases below."""
        return self.hyper_w1_weight, self.hyper_wf_weight, self.hyper_b1_weight, self.v1_weight

    @property
    def state_biases(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.hyper_w1_bias, self.hyper_wf_bias, self.hyper_b1_bias, self.v1_bias

    def flat(self) -> list[Tensor]:
        return [x for x in self if x is not None]

    @classmethod
    def from_flat(cls, tensors) -> QMixParams:
        """The inverse of :meth:`flat`: 10 tensors (one-layer) or 14 (two-layer)."""
        if len(tensors) not in (10, 14):
            raise ValueError(f"fastmarl::qmix: expected 10 or 14 parameter tensors, got {len(tensors)}")
        return cls(*tensors)

    def map(self, fn) -> QMixParams:
        """``fn`` applied to every tensor present."""
        return QMixParams(*(None if x is None else fn(x) for x in self))


# The module attribute paths of each field, by hypernetwork depth: TorchRL's names for one layer
# (PyMARL's), EPyMARL's nn.Sequential names for two.
MODULE_PARAM_NAMES = {
    1: ("hyper_w_1.weight", "hyper_w_1.bias", "hyper_w_final.weight", "hyper_w_final.bias",
        "hyper_b_1.weight", "hyper_b_1.bias", "V.0.weight", "V.0.bias", "V.2.weight", "V.2.bias"),
    2: ("hyper_w_1.0.weight", "hyper_w_1.0.bias", "hyper_w_final.0.weight", "hyper_w_final.0.bias",
        "hyper_b_1.weight", "hyper_b_1.bias", "V.0.weight", "V.0.bias", "V.2.weight", "V.2.bias",
        "hyper_w_1.2.weight", "hyper_w_1.2.bias", "hyper_w_final.2.weight", "hyper_w_final.2.bias"),
}
