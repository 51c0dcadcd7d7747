"""``fastmarl train`` and ``fastmarl compare``: MAPPO / IPPO / QMIX on VMAS, timed, resumable.

``TrainConfig``, ``validate`` and ``RunError`` import without torch (the CLI builds its help
from them); ``train`` and ``compare`` load the trainers on first use.
"""

from fastmarl.training.config import RunError, TrainConfig, validate

__all__ = ["RunError", "TrainConfig", "compare", "train", "validate"]


def __getattr__(name: str):
    if name in ("train", "compare"):
        from fastmarl.training import driver

        return getattr(driver, name)
    raise AttributeError(f"module 'fastmarl.training' has no attribute {name!r}")
