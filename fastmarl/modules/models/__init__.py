"""Drop-ins for :mod:`torchrl.modules.models`."""
