"""Compile fastmarl's Triton kernels for NVIDIA targets without a GPU (run as a script).

Triton lowers a kernel to PTX and cubin for an explicit ``GPUTarget`` with no driver present, so
a machine without a GPU still checks what the interpreter cannot: that each kernel type-checks
and lowers on the real backend for the dtypes and flag combinations fastmarl launches.
Prints one line per compiled variant; exits non-zero on the first failure.
"""

import inspect
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource


def compile_for(kernel, target, pointers, scalars, constexprs):
    names = list(inspect.signature(kernel.fn).parameters)
    signature = {}
    for name in names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = pointers[name]
        else:
            signature[name] = scalars.get(name, "i32")
    source = ASTSource(
        fn=kernel, signature=signature,
        constexprs={(names.index(k),): v for k, v in constexprs.items()},
    )
    return triton.compile(source, target=target)


def gae_variants():
    from fastmarl.kernels.gae import gae_bwd_kernel, gae_block_sizes, gae_fwd_kernel

    fwd_names = ("value_ptr", "next_value_ptr", "reward_ptr", "gamma_ptr", "lmbda_ptr",
                 "advantage_ptr", "value_target_ptr")
    bwd_names = ("grad_advantage_ptr", "grad_value_target_ptr", "gamma_ptr", "lmbda_ptr",
                 "grad_value_ptr", "grad_next_value_ptr", "grad_reward_ptr")
    # (float type, flag type, scalar type, F, tensor discounts): eager launches pass Python
    # floats as fp32, Inductor as fp64.
    cases = [
        ("fp32", "i1", "fp32", 3, False),
        ("fp32", "u8", "fp64", 8, True),
        ("fp16", "i1", "fp32", 70, False),
        ("bf16", "i1", "fp64", 1, False),
        ("fp64", "i1", "fp32", 4, True),
    ]
    for float_t, flag_t, scalar_t, features, tensors in cases:
        block_t, block_f = gae_block_sizes(features)
        constexprs = dict(BT=block_t, BF=block_f, HAS_GAMMA_TENSOR=tensors,
                          HAS_LMBDA_TENSOR=tensors, ACC_FP64=float_t == "fp64")
        scalars = {"gamma": scalar_t, "lmbda": scalar_t}
        flags = {"done_ptr": f"*{flag_t}", "terminated_ptr": f"*{flag_t}"}
        yield (f"gae_fwd {float_t}/{flag_t}/{scalar_t} F={features} tensors={tensors}", gae_fwd_kernel,
               {**{n: f"*{float_t}" for n in fwd_names}, **flags}, scalars, constexprs)
        yield (f"gae_bwd {float_t}/{flag_t}/{scalar_t} F={features} tensors={tensors}", gae_bwd_kernel,
               {**{n: f"*{float_t}" for n in bwd_names}, **flags}, scalars, constexprs)


def main() -> int:
    targets = [GPUTarget("cuda", 90, 32), GPUTarget("cuda", 80, 32)]
    for target in targets:
        for name, kernel, pointers, scalars, constexprs in gae_variants():
            compiled = compile_for(kernel, target, pointers, scalars, constexprs)
            assert compiled.asm.get("cubin"), name
            print(f"sm_{target.arch} {name}: ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
