"""What the PPO ops compute, in constants every implementation shares (defined once)."""

import torch

# TorchRL's ``_standardize`` clamps the advantage std at float32 resolution whatever the dtype.
ADVANTAGE_STD_EPS = torch.finfo(torch.float32).resolution
REDUCTIONS = ("mean", "sum", "none")
CRITIC_LOSS_TYPES = ("l1", "l2", "smooth_l1")
