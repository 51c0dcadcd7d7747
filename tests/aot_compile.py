"""Compile fastmarl's Triton kernels for NVIDIA targets without a GPU (run as a script).

    python tests/aot_compile.py gae [other ops...]

Triton lowers a kernel to PTX and cubin for an explicit ``GPUTarget`` with no driver present, so
a machine without a GPU still checks what the interpreter cannot: that each kernel type-checks
and lowers on the real backend for the dtypes and flag combinations fastmarl launches. Each op
has a module ``tests/aot_<op>.py`` whose ``variants()`` yields
``(name, kernel, pointer types, scalar types, constexprs)``. Prints one line per compiled
variant; exits non-zero on the first failure.
"""

import importlib
import inspect
import sys
from pathlib import Path

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


def main(ops: list[str]) -> int:
    sys.path.insert(0, str(Path(__file__).parent))
    targets = [GPUTarget("cuda", 90, 32), GPUTarget("cuda", 80, 32)]
    for op in ops:
        variants = list(importlib.import_module(f"aot_{op}").variants())
        for target in targets:
            for name, kernel, pointers, scalars, constexprs in variants:
                compiled = compile_for(kernel, target, pointers, scalars, constexprs)
                assert compiled.asm.get("cubin"), name
                print(f"sm_{target.arch} {name}: ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
