"""Drop-in for :mod:`torchrl.objectives.value`.

``GAE`` and ``MultiAgentGAE`` are fastmarl's (one Triton/torch op for the scan); the other
estimators are TorchRL's, re-exported so that swapping the import path keeps working.
"""

from torchrl.objectives.value import (
    TD0Estimate,
    TD0Estimator,
    TD1Estimate,
    TD1Estimator,
    TDLambdaEstimate,
    TDLambdaEstimator,
    ValueEstimatorBase,
    VTrace,
)

from fastmarl.objectives.value import functional
from fastmarl.objectives.value.advantages import GAE, MultiAgentGAE

__all__ = [
    "GAE",
    "MultiAgentGAE",
    "TD0Estimate",
    "TD0Estimator",
    "TD1Estimate",
    "TD1Estimator",
    "TDLambdaEstimate",
    "TDLambdaEstimator",
    "ValueEstimatorBase",
    "VTrace",
    "functional",
]
