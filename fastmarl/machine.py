"""What a result was measured on: the device's name, for run folders, benchmark JSON and
``fastmarl check`` (standard library only at import)."""

from __future__ import annotations

import platform


def device_name(device: str = "cpu") -> str:
    """The GPU's name for a CUDA device, else the CPU model (``/proc/cpuinfo``'s, where there is one)."""
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
