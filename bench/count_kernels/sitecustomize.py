"""Counts the Triton kernel specialisations a process launches, for the GPU time budget.

Active only when ``FASTMARL_COUNT_KERNELS=FILE`` is set and this folder is on ``PYTHONPATH``
(``bench/gpu_session.sh --dry-run`` does both). Under ``TRITON_INTERPRET=1`` nothing compiles,
but each launch's specialisation key is what a GPU compiles once: the kernel, its constexprs,
``num_warps``, each pointer's dtype and 16-byte alignment, and for each integer Triton
specialises (not ``do_not_specialize``) whether it is 1 or a multiple of 16. At exit the distinct
keys are appended to FILE, one JSON line each.
"""

import os

_PATH = os.environ.get("FASTMARL_COUNT_KERNELS")

if _PATH:
    import atexit
    import json

    _KEYS: set = set()

    def _key(fn, args, kwargs):
        names = fn.arg_names
        values = dict(zip(names, args), **kwargs)
        annotations = getattr(fn.fn, "__annotations__", {})
        skip = set(fn.kwargs.get("do_not_specialize") or ())
        parts = [fn.fn.__name__]
        for name in sorted(values):
            value = values[name]
            if "constexpr" in str(annotations.get(name, "")) or name in ("num_warps", "num_stages"):
                parts.append(f"{name}={value}")
            elif hasattr(value, "data_ptr"):
                parts.append(f"{name}:{value.dtype}:{value.data_ptr() % 16 == 0}")
            elif isinstance(value, bool):
                parts.append(f"{name}:bool")
            elif isinstance(value, int) and name not in skip:
                parts.append(f"{name}:{value == 1}:{value % 16 == 0}")
            elif isinstance(value, float):
                parts.append(f"{name}:float")
        return "|".join(parts)

    def _install():
        from triton.runtime import interpreter

        original = interpreter.InterpretedFunction.run

        def run(self, *args, grid, warmup, **kwargs):
            try:
                _KEYS.add(_key(self, args, kwargs))
            except Exception:  # noqa: BLE001 - counting never breaks a run
                pass
            return original(self, *args, grid=grid, warmup=warmup, **kwargs)

        interpreter.InterpretedFunction.run = run

    def _dump():
        if _KEYS:
            with open(_PATH, "a") as f:
                for key in sorted(_KEYS):
                    f.write(json.dumps({"kernel": key.split("|", 1)[0], "key": key}) + "\n")

    try:
        _install()
        atexit.register(_dump)
    except ImportError:
        pass
