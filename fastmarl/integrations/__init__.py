"""Integrations of fastmarl with training frameworks built on TorchRL.

- :mod:`fastmarl.integrations.benchmarl`: BenchMARL's MAPPO, IPPO, QMIX and VDN on fastmarl's
  losses, mixer and GAE (``FastMappoConfig`` etc.), and BenchMARL 1.5.2 on TorchRL 0.14.

Each integration imports its framework only when it is imported itself, so ``import fastmarl``
never needs them.
"""
