"""Triton kernels of fastmarl, installed as ``fastmarl.kernels``: one file per op, Triton only.

Importing a kernel module needs Triton; ``fastmarl.ops`` imports them only when Triton is there.
"""
