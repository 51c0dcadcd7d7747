"""A training run's random state, captured and restored as plain tensors.

Two streams feed a run: torch's global generators (network initialisation, action sampling,
minibatch permutations, ε-greedy) and VMAS's own. VMAS keeps a process-wide state in the class
attribute ``vmas.simulator.environment.Environment.vmas_random_state`` ([torch CPU state, numpy
state, Python ``random`` state]) and swaps it in around every reset and step, so every VMAS
environment in the process shares it. A run that must resume exactly, or two runs alternating in
one process (``fastmarl compare``), keep both streams as their own.

Everything is a tensor or a number, so that ``torch.load(weights_only=True)`` reads it back.
"""

from __future__ import annotations


import numpy as np
import torch


def _vmas_state_list():
    """VMAS's shared random state (a list mutated in place by its ``local_seed`` decorator)."""
    from vmas.simulator.environment.environment import Environment

    return Environment.vmas_random_state


def _numpy_to_tensors(state) -> dict:
    kind, keys, pos, has_gauss, cached_gaussian = state
    return {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}


def _numpy_from_tensors(state: dict):
    return (state["kind"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"],
            state["cached_gaussian"])


def _python_to_tensors(state) -> dict:
    version, internal, gauss_next = state
    return {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next}


def _python_from_tensors(state: dict):
    return (state["version"], tuple(int(x) for x in state["internal"].tolist()), state["gauss_next"])


def capture(device: str) -> dict:
    """The random state a run carries from one iteration to the next."""
    state = {"cpu": torch.get_rng_state()}
    if torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    vmas_torch, vmas_numpy, vmas_python = _vmas_state_list()
    state["vmas"] = {"torch": vmas_torch.clone(), "numpy": _numpy_to_tensors(vmas_numpy),
                     "python": _python_to_tensors(vmas_python)}
    return state


def restore(state: dict, device: str) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    if "vmas" in state:
        shared = _vmas_state_list()
        shared[0] = state["vmas"]["torch"].clone()
        shared[1] = _numpy_from_tensors(state["vmas"]["numpy"])
        shared[2] = _python_from_tensors(state["vmas"]["python"])


def check(state) -> bool:
    """Whether ``state`` looks like ``capture()``'s output (for checkpoint validation)."""
    if not isinstance(state, dict) or not isinstance(state.get("cpu"), torch.Tensor):
        return False
    vmas = state.get("vmas")
    return vmas is None or (isinstance(vmas, dict) and {"torch", "numpy", "python"} <= set(vmas))


__all__ = ["capture", "restore", "check"]
