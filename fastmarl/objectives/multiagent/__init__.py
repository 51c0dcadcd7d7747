"""Drop-ins for :mod:`torchrl.objectives.multiagent`."""
