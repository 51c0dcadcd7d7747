"""``fastmarl train`` and ``fastmarl compare``: MAPPO / IPPO / QMIX on VMAS, timed, resumable."""

from fastmarl.training.config import TrainConfig, validate
from fastmarl.training.driver import compare, train

__all__ = ["TrainConfig", "compare", "train", "validate"]
