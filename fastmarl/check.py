"""``fastmarl check``: a self-test of every op on this machine, then a short speed table.

    fastmarl check [--device cpu|cuda] [--quick] [--interpret] [--json FILE] [--ops gae,...]

**Correctness.** For every op (GAE, PPO clip, PPO critic, QMIX with one- and two-layer
hypernetworks), forward and backward, in float32, bfloat16, float16 and float64, on fresh
random inputs of odd shapes (T=1, T=63, a long T, B=1, odd agent counts, feature blocks that
do not divide), non-contiguous and stride-0 inputs, every done pattern, reductions, loss types
and normalisations: the public functional (``fastmarl.functional``) with autograd, against the
op's float64 oracle (``fastmarl/ops/<op>/naive.py``, TorchRL's math) on the same rounded
inputs and cotangents. The error is ``‖out − ref‖ / ‖ref‖`` in float64 (a NaN or inf where the
reference has none fails), less the error of rounding the reference to the output's dtype
(which no implementation can avoid); each dtype has its tolerance (:data:`TOLERANCES`).

Outputs are poisoned: the checks run with ``torch.use_deterministic_algorithms(True,
warn_only=True)``, under which PyTorch fills every ``torch.empty`` with NaN
(``torch.utils.deterministic.fill_uninitialized_memory``), so an element that a kernel (Triton
or torch) allocates and forgets to write is NaN and fails.

Paths: on CUDA, what users run (``auto``: the path policy, the Triton kernels where they apply).
On the CPU, every CPU path (``op``, ``fused``, ``composite``, forced with
:func:`fastmarl.ops.force_path`); with ``--interpret`` also ``triton``: the ops' CUDA code path
(policy, allocation, Triton launchers, fallbacks) on CPU tensors, the kernels run by Triton's
interpreter at small shapes (the command re-runs itself with ``TRITON_INTERPRET=1`` when
Triton was imported without it).

**Speed.** fastmarl against TorchRL eager and ``torch.compile`` of TorchRL's math, on the same
inputs, timed round by round in turn (median; the device synchronised around each call):
GAE forward, PPO clip + critic forward + backward, QMIX mixer forward + backward. ``--quick``
skips the compiled peer (a compile takes tens of seconds) and shrinks the sizes.

Prints one table (op, dtype, shape class, max rel. error, pass, ms, speed-up); exits 1 if any
check fails, 2 on bad usage. ``--json`` writes every case.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field

OPS = ("gae", "ppo_clip", "ppo_critic", "qmix", "qmix2")
DTYPES = ("float32", "bfloat16", "float16", "float64")
# ‖out − ref‖ / ‖ref‖ against the float64 oracle on the same rounded inputs, less the rounding of
# the reference to the output's dtype (see rel_error). float32: the ops accumulate in float32, a
# few ulps over sums of thousands of terms; half dtypes: float32 arithmetic, then one rounding
# that may land on the neighbouring value (one ulp of a scalar: 2**-8 for bfloat16, 2**-10 for
# float16), with a margin of 4 ulps; float64: the same arithmetic in another order.
TOLERANCES = {"float64": 1e-10, "float32": 1e-5, "bfloat16": 1.6e-2, "float16": 4e-3}
# fastmarl against TorchRL eager on the speed rows' float32 inputs (another order of operations).
SPEED_TOLERANCE = 1e-4


@dataclass
class Result:
    """One check: an op's outputs and gradients on one input set, by one path."""

    op: str
    dtype: str
    shape_class: str
    path: str
    variant: str
    error: float
    tolerance: float
    passed: bool
    seconds: float
    worst: str = ""  # the output or gradient with the largest error
    detail: str = ""  # an exception, when the call raised


@dataclass
class SpeedRow:
    op: str
    dtype: str
    shape_class: str
    error: float  # fastmarl against TorchRL eager
    passed: bool
    ms: dict[str, float] = field(default_factory=dict)  # median per provider
    note: str = ""


# --------------------------------------------------------------------------- the command line


def add_check_parser(subparsers) -> None:
    """The ``check`` subcommand (imports nothing heavy: torch loads in :func:`run`)."""
    parser = subparsers.add_parser(
        "check", help="self-test every op here against float64 references, then time it",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="where to check (default: cuda when available, else cpu)")
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes, no torch.compile peer in the speed table")
    parser.add_argument("--interpret", action="store_true",
                        help="CPU only: also run the Triton kernels in Triton's interpreter")
    parser.add_argument("--json", default=None, metavar="FILE", help="write every case to FILE")
    parser.add_argument("--ops", default=",".join(OPS),
                        help=f"comma-separated subset of {','.join(OPS)} (default: all)")
    parser.add_argument("--dtypes", default=",".join(DTYPES),
                        help=f"comma-separated subset of {','.join(DTYPES)} (default: all)")
    parser.add_argument("--paths", default=None,
                        help="comma-separated subset of the paths to check (cpu: op,fused,composite"
                             "[,triton with --interpret]; cuda: auto)")
    parser.add_argument("--no-speed", action="store_true", help="correctness only")
    parser.add_argument("--jobs", type=int, default=1,
                        help="check each (op, dtype) in its own process, this many at once (their "
                             "Triton kernels compile in parallel: a GPU host has the cores)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastmarl check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


def _argv(args) -> list[str]:
    # The command line of ``args``, to re-run it in a child process.
    out = ["--device", args.device or "cpu", "--ops", args.ops, "--dtypes", args.dtypes, "--seed", str(args.seed)]
    out += ["--paths", args.paths] if args.paths else []
    out += ["--quick"] * args.quick + ["--interpret"] * args.interpret + ["--no-speed"] * args.no_speed
    return out + ["--jobs", str(args.jobs)] + (["--json", args.json] if args.json else [])


def run(args) -> int:
    ops = [op.strip() for op in args.ops.split(",") if op.strip()]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for flag, names, known in (("--ops", ops, OPS), ("--dtypes", dtypes, DTYPES)):
        unknown = [name for name in names if name not in known]
        if unknown or not names:
            print(f"fastmarl check: error: {flag}: unknown name(s) {unknown}; expected names from "
                  f"{list(known)}", file=sys.stderr)
            return 2
    # The checks run in deterministic mode (for its NaN-filled torch.empty, see poisoned_empty);
    # cuBLAS is deterministic with this workspace setting, read when cuBLAS starts.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("fastmarl check: error: --device cuda asked for, but no CUDA device is available",
              file=sys.stderr)
        return 2
    from fastmarl.ops.triton_support import HAS_TRITON, interpreting

    if args.interpret:
        if device != "cpu":
            print("fastmarl check: error: --interpret runs the Triton kernels on CPU tensors; "
                  "use it with --device cpu", file=sys.stderr)
            return 2
        if not HAS_TRITON:
            print("fastmarl check: error: --interpret needs Triton (pip install triton)", file=sys.stderr)
            return 2
        if not interpreting():
            # Triton reads TRITON_INTERPRET when a kernel is defined, and importing fastmarl
            # defined them: run again in a process that sets it first.
            import subprocess

            env = dict(os.environ, TRITON_INTERPRET="1")
            return subprocess.call([sys.executable, "-m", "fastmarl", "check", *_argv(args)], env=env)
    checker = Checker(device, ops, quick=args.quick, interpret=args.interpret, seed=args.seed,
                      dtypes=dtypes)
    if args.paths:
        paths = [p.strip() for p in args.paths.split(",") if p.strip()]
        known = {p for op in ops for p in checker.paths(op)}
        if not paths or any(p not in known for p in paths):
            print(f"fastmarl check: error: --paths: expected names from {sorted(known)} here, got {paths}",
                  file=sys.stderr)
            return 2
        checker.only_paths = paths
    start = time.perf_counter()
    if args.jobs > 1 and len(dtypes) * len(ops) > 1:
        results = _correctness_in_processes(args, device, ops, dtypes)
    else:
        results = checker.correctness()
    speed = [] if args.no_speed else checker.speed()
    seconds = time.perf_counter() - start
    passed = all(r.passed for r in results) and all(r.passed for r in speed)
    print(format_table(results, speed, checker.header()))
    failures = [r for r in results if not r.passed] + [r for r in speed if not r.passed]
    if failures:
        print(f"\n{len(failures)} check(s) FAILED:")
        for r in failures[:40]:
            if isinstance(r, Result):
                print(f"  {r.op} {r.dtype} [{r.shape_class}] path={r.path} {r.variant}: "
                      f"{r.worst} error {r.error:.3g} > {r.tolerance:g} {r.detail}")
            else:
                print(f"  speed {r.op} [{r.shape_class}]: fastmarl vs TorchRL error {r.error:.3g} {r.note}")
    print(f"\n{len(results)} checks, {len(failures)} failed, {seconds:.1f} s"
          + ("" if passed else "  -> FAIL"))
    if args.json:
        import json
        import tempfile

        payload = {**checker.header_info(), "passed": passed, "seconds": round(seconds, 2),
                   "tolerances": TOLERANCES, "results": [asdict(r) for r in results],
                   "speed": [asdict(r) for r in speed]}
        # Atomically (a temporary file, then a rename): a reader never sees half a file. Not
        # fastmarl.training.run's helper: that package needs the [train] extras.
        folder = os.path.dirname(os.path.abspath(args.json))
        with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp") as f:
            f.write(json.dumps(payload, indent=1, default=str))
        os.replace(f.name, args.json)
    return 0 if passed else 1


def _correctness_in_processes(args, device: str, ops: list[str], dtypes: list[str]) -> list[Result]:
    """The correctness checks, one process per (op, dtype), ``args.jobs`` at a time: each
    compiles its own Triton kernels (the on-disk cache is shared), so a many-core GPU host
    compiles the ~500 kernel specialisations of a full check in parallel. PPO's surrogate,
    with the most specialisations, starts first."""
    import json
    import subprocess
    import tempfile

    units = sorted(((op, dtype) for op in ops for dtype in dtypes), key=lambda u: u[0] != "ppo_clip")
    done: dict[tuple[str, str], list[Result]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        running: list[tuple[tuple[str, str], str, subprocess.Popen]] = []
        while units or running:
            while units and len(running) < args.jobs:
                op, dtype = units.pop(0)
                path = os.path.join(tmp, f"{op}-{dtype}.json")
                child = argparse.Namespace(**{**vars(args), "ops": op, "dtypes": dtype, "no_speed": True,
                                              "json": path, "device": device, "jobs": 1})
                command = [sys.executable, "-m", "fastmarl", "check", *_argv(child)]
                running.append(((op, dtype), path, subprocess.Popen(
                    command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
            # Collect whichever finishes first, so a slow unit does not hold a free slot.
            while True:
                finished = [r for r in running if r[2].poll() is not None]
                if finished:
                    break
                time.sleep(0.05)
            for unit, path, proc in finished:
                running.remove((unit, path, proc))
                output = proc.stdout.read()
                if proc.returncode in (0, 1) and os.path.exists(path):
                    done[unit] = [Result(**r) for r in json.loads(open(path).read())["results"]]
                else:
                    done[unit] = [Result(unit[0], unit[1], "-", "-", "-", math.inf, TOLERANCES[unit[1]], False,
                                         0.0, "process", f"exit code {proc.returncode}: {output[-300:]}")]
    return [r for op in ops for dtype in dtypes for r in done[(op, dtype)]]


# --------------------------------------------------------------------------- the table


def _fmt_err(x: float) -> str:
    return f"{x:.1e}" if math.isfinite(x) else str(x)


def format_table(results: list[Result], speed: list[SpeedRow], header: str = "") -> str:
    """One table: a row per (op, dtype) with the worst case's shape class and error over every
    shape class, variant and path, then a row per timed size."""
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.op, r.dtype), []).append(r)
    width = (15, 8, 36, 11, 6, 8, 0)
    line = "  ".join(f"{h:<{w}}" for h, w in zip(
        ("op", "dtype", "shape class (worst case)", "max rel err", "pass", "ms", "speed-up | paths"), width))
    rows = [header, line, "-" * len(line)] if header else [line, "-" * len(line)]
    order = {name: i for i, name in enumerate((*OPS, *DTYPES))}
    for (op, dtype), group in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 99), order.get(kv[0][1], 99))):
        worst = max(group, key=lambda r: (not r.passed, r.error / r.tolerance if math.isfinite(r.error) else math.inf))
        failed = sum(not r.passed for r in group)
        classes = len({r.shape_class for r in group})
        paths = sorted({r.path for r in group})
        where = f"{worst.shape_class} ({classes} classes)"
        status = "ok" if not failed else f"FAIL {failed}"
        ms = f"{sum(r.seconds for r in group) * 1e3:.0f}"
        cells = (op, dtype, where, _fmt_err(worst.error), status, ms, "paths " + "/".join(paths))
        rows.append("  ".join(f"{c:<{w}}" for c, w in zip(cells, width)))
    if speed:
        rows.append("-" * len(line))
        for r in speed:
            ours = r.ms.get("fastmarl")
            ups = [f"{r.ms[p] / ours:.2f}x {label}" for p, label in (("torchrl", "eager"), ("torchrl_compiled", "compiled"))
                   if ours and p in r.ms]
            cells = (r.op, r.dtype, r.shape_class, _fmt_err(r.error), "ok" if r.passed else "FAIL",
                     f"{ours:.3f}" if ours else "-", ", ".join(ups) + (f" {r.note}" if r.note else ""))
            rows.append("  ".join(f"{c:<{w}}" for c, w in zip(cells, width)))
    return "\n".join(rows)


# --------------------------------------------------------------------------- errors


def rel_error(actual, expected, scale=None) -> float:
    """``‖actual − expected‖ / ‖expected‖`` in float64 (``‖actual − expected‖`` when the
    reference is 0). NaN or inf where the reference has none, or shapes that differ: inf.

    ``scale``, for a reduction of terms of both signs (a mean log-ratio, a loss over
    standardised advantages), is the same reduction of the terms' magnitudes: the denominator
    is then ``max(‖expected‖, ‖scale‖)``, the size rounding errors scale with, so that a sum
    that cancels to nearly 0 is not held to a relative error of its tiny result.

    The error of rounding the reference to ``actual``'s dtype, ``‖round(expected) − expected‖``,
    is subtracted first: no implementation returning that dtype can do better, and for half
    dtypes it is not a relative error (float16's subnormals, below 6.1e-5, have an absolute
    spacing: a mean-reduced gradient of 12,000 elements, ~1e-4 each, loses ~1% to it)."""
    import torch

    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    dtype = actual.dtype if actual.is_floating_point() else torch.float64
    floor = 0.0 if scale is None else float(torch.linalg.vector_norm(scale.detach().to("cpu", torch.float64)))
    if a.shape != e.shape:
        return math.inf
    special = ~torch.isfinite(e)
    if not torch.equal(~torch.isfinite(a), special):
        return math.inf
    if special.any():
        # NaN where the reference is NaN, the same infinities: compare the rest.
        same = torch.equal(a[special].isnan(), e[special].isnan())
        inf = special & ~e.isnan()
        if not same or not torch.equal(a[inf], e[inf]):
            return math.inf
        a, e = a[~special], e[~special]
    rounding = float(torch.linalg.vector_norm(e.to(dtype).to(torch.float64) - e))
    diff = max(0.0, float(torch.linalg.vector_norm(a - e)) - rounding)
    ref = max(float(torch.linalg.vector_norm(e)), floor)
    return diff / ref if ref > 0 else diff


@contextmanager
def poisoned_empty() -> Iterator[None]:
    """Every ``torch.empty`` (and ``empty_like``, ``new_empty``...) inside the block is filled
    with NaN (integers with their maximum): PyTorch's deterministic mode. ``warn_only`` keeps
    ops without a deterministic implementation running (with a warning)."""
    import warnings

    import torch

    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if not torch.empty(4).isnan().all():
                raise RuntimeError("fastmarl check: this torch does not fill torch.empty with NaN in "
                                   "deterministic mode; the output poisoning would be void")
            yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.utils.deterministic.fill_uninitialized_memory = previous[2]


# --------------------------------------------------------------------------- inputs


@dataclass
class Leaf:
    """One input: a leaf tensor of ``shape`` drawn in float64, and ``view`` from the leaf to the
    argument (a transpose, a slice, an expand: how non-contiguous and stride-0 inputs arise)."""

    shape: tuple[int, ...]
    view: Callable = lambda x: x  # exact (no arithmetic): both sides see the same values
    kind: str = "normal"  # normal | flag
    grad: bool = True
    scale: float = 1.0  # standard deviation, applied before rounding to the dtype


def _draw(leaf: Leaf, generator):
    import torch

    return leaf.scale * torch.randn(leaf.shape, generator=generator, dtype=torch.float64)


class Inputs:
    """Leaves drawn once in float64, rounded to the dtype under test; the oracle's float64
    copies of the rounded values; and the views both sides pass to their function."""

    def __init__(self, leaves: dict[str, Leaf], dtype, device, generator, flags=None):
        import torch

        self.leaves = leaves
        self.dtype = dtype
        self.device = device
        self.test, self.ref = {}, {}
        for name, leaf in leaves.items():
            if leaf.kind == "flag":
                value = flags[name]
                self.test[name] = value.to(device)
                self.ref[name] = value
                continue
            drawn = _draw(leaf, generator).to(dtype)
            self.test[name] = drawn.to(device)
            self.ref[name] = drawn.to(torch.float64)

    def arguments(self, side: str, grad: bool = True) -> tuple[dict, dict]:
        """``(views by name, leaves that require grad by name)`` for ``side`` (test or ref)."""
        source = self.test if side == "test" else self.ref
        views, leaves = {}, {}
        for name, leaf in self.leaves.items():
            x = source[name]
            if leaf.kind != "flag" and leaf.grad and grad:
                x = x.detach().clone().requires_grad_()
                leaves[name] = x
            views[name] = leaf.view(x)
        return views, leaves


def _run(fn, views: dict, leaves: dict, cotangent: Callable, differentiable: tuple[str, ...]):
    """``fn(**views)`` -> outputs by name; backward of ``sum(out * cot)`` over the
    differentiable outputs (``cotangent(name, output)`` gives a float64 cotangent); returns
    the outputs and the leaves' gradients."""
    import torch

    out = fn(**views)
    pairs = [(out[k], cotangent(k, out[k])) for k in differentiable if k in out]
    if leaves and pairs:
        wanted = list(leaves.values())
        grads = torch.autograd.grad([o for o, _ in pairs],
                                    wanted, [c.to(o.device, o.dtype) for o, c in pairs], allow_unused=True)
        grad_out = {f"d_{name}": g for name, g in zip(leaves, grads) if g is not None}
    else:
        grad_out = {}
    return {k: v.detach() for k, v in out.items()}, grad_out


# --------------------------------------------------------------------------- the checker


class Checker:
    """Runs the checks of :data:`OPS` on one device (see the module docstring)."""

    def __init__(self, device: str, ops, *, quick: bool = False, interpret: bool = False, seed: int = 0,
                 dtypes=DTYPES):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.ops = list(ops)
        self.dtype_names = list(dtypes)
        self.quick = quick
        self.interpret = interpret
        self.seed = seed
        self.mode = "cuda" if self.device.type == "cuda" else ("interpret" if interpret else "cpu")
        self.only_paths: list[str] | None = None

    # -- description

    def header_info(self) -> dict:
        import importlib.metadata

        torch = self.torch

        def version(name):
            try:
                return importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                return None

        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else _cpu_name()
        return {"device": self.device.type, "device_name": name, "torch": torch.__version__,
                "triton": version("triton"), "torchrl": version("torchrl"), "quick": self.quick,
                "interpret": self.interpret, "seed": self.seed, "ops": self.ops}

    def header(self) -> str:
        info = self.header_info()
        return (f"fastmarl check on {info['device']} ({info['device_name']}): torch {info['torch']}, "
                f"triton {info['triton']}, torchrl {info['torchrl']}"
                + (", quick" if self.quick else "") + (", Triton interpreter" if self.interpret else "")
                + "\nerror = ||out - ref|| / ||ref|| against float64 TorchRL math; outputs poisoned with NaN")

    def _dtypes(self):
        torch = self.torch
        return [(name, getattr(torch, name)) for name in self.dtype_names]

    def paths(self, op: str) -> list[str]:
        """The paths checked for ``op`` here (see the module docstring)."""
        if self.mode == "cuda":
            paths = ["auto"]
        else:
            paths = ["op", "composite"] if op == "gae" else ["op", "fused", "composite"]
            paths += ["triton"] if self.interpret else []
        return [p for p in paths if self.only_paths is None or p in self.only_paths]

    @contextmanager
    def on_path(self, op: str, path: str):
        from fastmarl.ops import force_path

        if path == "auto":
            context = nullcontext()
        elif path == "triton":
            context = self._interpreted_kernels()
        else:
            context = force_path(path, "qmix" if op.startswith("qmix") else op)
        with context:
            yield

    @contextmanager
    def _interpreted_kernels(self):
        # The CUDA code path on CPU tensors, with the smallest tiles: the interpreter runs each
        # program in numpy (a [512, 4] GAE tile costs it ~0.1 s, a [16, 4] one ~5 ms), and small
        # tiles cross tiles and programs at these small shapes, which is what the carries
        # between tiles and the partial reductions between programs need to be checked on.
        from fastmarl.ops import tuning
        from fastmarl.ops.triton_support import cpu_tensors_on_interpreter

        small = {"gae_fwd": {"BT": 16}, "gae_bwd": {"BT": 16}, "qmix_fwd": {"BB": 16}, "qmix_bwd": {"BB": 16}}
        small.update({f: {"BN": 16} for f in ("ppo_clip", "ppo_clip_bwd", "ppo_critic", "ppo_critic_bwd")})
        with cpu_tensors_on_interpreter(), tuning.override(small):
            yield

    def size(self, cpu, cuda, interpret=None, quick=None):
        """A size by mode: interpret (small: numpy runs each program), cpu or cuda; ``quick``
        replaces it under ``--quick`` (but for the interpreter, already small)."""
        if self.mode == "interpret":
            return interpret if interpret is not None else cpu
        if self.quick and quick is not None:
            return quick
        return cuda if self.mode == "cuda" else cpu

    # -- correctness

    def correctness(self) -> list[Result]:
        torch = self.torch
        generator = torch.Generator().manual_seed(self.seed)
        results = []
        with poisoned_empty():
            for op in self.ops:
                for dtype_name, dtype in self._dtypes():
                    for shape_class, variant, case in getattr(self, f"_cases_{op.rstrip('2')}")(op):
                        results += self._check(op, dtype_name, dtype, shape_class, variant, case, generator)
        return results

    def _check(self, op, dtype_name, dtype, shape_class, variant, case, generator) -> list[Result]:
        """One input set in one dtype: the oracle once, then every path."""
        leaves, flags, fn, ref_fn, differentiable, skip = case(dtype)
        inputs = Inputs(leaves, dtype, self.device, generator, flags)
        ref_views, ref_leaves = inputs.arguments("ref")
        cotangents = {}

        def cotangent(name, out):
            # Drawn once, in the dtype under test: both sides use the same rounded values.
            if name not in cotangents:
                cotangents[name] = torch_randn_like(out, generator, dtype)
            return cotangents[name]

        ref_out, ref_grads = _run(ref_fn, ref_views, ref_leaves, cotangent, differentiable)
        scales = {k.removeprefix("scale:"): v for k, v in ref_out.items() if k.startswith("scale:")}
        expected = {k: v for k, v in {**ref_out, **ref_grads}.items() if not k.startswith("scale:")}
        results = []
        for path in self.paths(op):
            reason = skip(path) if skip else None
            if reason:
                continue
            start = time.perf_counter()
            views, test_leaves = inputs.arguments("test")
            worst, error, detail = "", 0.0, ""
            try:
                with self.on_path(op, path):
                    out, grads = _run(fn, views, test_leaves, cotangent, differentiable)
                actual = {**out, **grads}
                for key, ref in expected.items():
                    err = rel_error(actual[key], ref, scales.get(key)) if key in actual else math.inf
                    if err >= error or not worst:
                        worst, error = key, err
            except Exception as exc:  # noqa: BLE001 - a check reports, it does not crash
                worst, error, detail = "call", math.inf, f"{type(exc).__name__}: {exc}"[:300]
            tolerance = TOLERANCES[dtype_name]
            results.append(Result(op, dtype_name, shape_class, path, variant, error, tolerance,
                                  error <= tolerance, time.perf_counter() - start, worst, detail))
        return results

    # -- GAE

    def _cases_gae(self, op):
        """(shape class, variant, case) for GAE on ``[B, T, A, 1]`` with time at dim 1."""
        torch = self.torch
        from fastmarl.functional import generalized_advantage_estimate
        from fastmarl.ops.gae.naive import gae as gae_naive

        # γ, λ exact in every dtype, bfloat16 included: TorchRL's arithmetic rounds a Python
        # float γ to float32, which would otherwise differ from float64 in the oracle.
        gamma, lmbda = 127 / 128, 15 / 16
        long_t = self.size(cpu=1000, cuda=10_000, interpret=200, quick=300)
        big = self.size(cpu=(256, 64, 8), cuda=(4096, 128, 8), interpret=(4, 40, 8), quick=(64, 32, 8))
        classes = {
            "T=1": (5, 1, 3), "T=63": (3, 63, 5), f"T={long_t}": (2, long_t, 3), "B=1": (1, 40, 7),
            "A=70 (2 feature blocks)": (1 if self.mode == "interpret" else 2, 9, 70), "B x T x A = " + "x".join(map(str, big)): big,
            "non-contiguous": (4, 21, 3), "stride-0 + tensor gamma": (3, 20, 4),
        }

        def make(shape_class, B, T, A, pattern):
            full = (B, T, A, 1)

            def case(dtype):
                leaves = {name: Leaf(full) for name in ("value", "next_value", "reward")}
                flag_shape = full
                flag_view = lambda x: x  # noqa: E731
                gamma_arg = gamma
                if shape_class == "non-contiguous":
                    leaves["value"] = Leaf((T, B, A, 1), lambda x: x.transpose(0, 1))
                    leaves["next_value"] = Leaf((B, 2 * T, A, 1), lambda x: x[:, ::2])
                    leaves["reward"] = Leaf((B, T, A, 2), lambda x: x[..., 1:])
                    flag_shape, flag_view = (T, B, A, 1), lambda x: x.transpose(0, 1)  # noqa: E731
                elif shape_class.startswith("stride-0"):
                    # A team reward and done flags shared by the agents (read with stride 0)
                    # and a per-step γ tensor broadcast over the batch and agents.
                    leaves["reward"] = Leaf((B, T, 1, 1), lambda x: x.expand(full))
                    flag_shape, flag_view = (B, T, 1, 1), lambda x: x.expand(full)  # noqa: E731
                    steps = torch.arange(T, dtype=torch.float64) % 3
                    gamma_arg = (gamma ** (1 + steps)).view(1, T, 1, 1)
                done, terminated = _flags(flag_shape, pattern, torch.Generator().manual_seed(T * 7 + B))
                flags = {"done": done, "terminated": terminated}
                leaves["done"] = Leaf(flag_shape, flag_view, kind="flag")
                leaves["terminated"] = Leaf(flag_shape, flag_view, kind="flag")

                def discount(like):
                    if isinstance(gamma_arg, float):
                        return gamma_arg
                    return gamma_arg.to(like.device, like.dtype if like.dtype == torch.float64 else torch.float32)

                def fn(value, next_value, reward, done, terminated):
                    adv, target = generalized_advantage_estimate(
                        discount(value), lmbda, value, next_value, reward, done, terminated, time_dim=1)
                    return {"advantage": adv, "value_target": target}

                def ref_fn(value, next_value, reward, done, terminated):
                    g = gamma_arg if isinstance(gamma_arg, float) else gamma_arg.double()
                    adv, target = gae_naive(g, lmbda, value, next_value, reward, done, terminated, time_dim=1)
                    return {"advantage": adv, "value_target": target}

                return leaves, flags, fn, ref_fn, ("advantage", "value_target"), None

            return case

        # Every done pattern; --quick keeps no done at all (the longest scans) and truncations
        # (done and terminated apart, at random steps).
        patterns = ("none", "truncated") if self.quick else ("none", "all", "random", "truncated")
        for shape_class, (B, T, A) in classes.items():
            for pattern in patterns:
                yield shape_class, f"done={pattern}", make(shape_class, B, T, A, pattern)

    # -- PPO

    def _ppo_shape_classes(self, stride0_input: str) -> dict:
        """The PPO ops' shape classes (name -> [N, A] or [N, T, A]), one input expanded in
        ``stride-0 <input>``."""
        big = self.size(cpu=(4097, 3), cuda=(65537, 8), interpret=(1025, 3), quick=(1025, 3))
        wide = self.size(cpu=(20, 300), cuda=(20, 300), interpret=(6, 300))
        return {
            "N=1": (1, 3), "N=63 A=5": (63, 5), "N x A = %dx%d" % big: big, "A=1": (40, 1),
            "[N, T, A] = 37x5x3": (37, 5, 3), "non-contiguous": (50, 3), f"stride-0 {stride0_input}": (45, 4),
            f"{wide[1]} columns (torch path)": wide,
        }

    def _cases_ppo_clip(self, op):
        torch = self.torch
        from fastmarl.functional import clip_bounds, ppo_clip_loss
        from fastmarl.ops.ppo.naive import ppo_clip as clip_naive
        from fastmarl.ops.ppo.naive import standardize_advantage

        classes = self._ppo_shape_classes("advantage")
        variants = [("per-agent", "mean"), ("per-agent", "none"), ("global", "sum"), ("per-agent", "sum"),
                    ("none", "mean")]
        if self.quick:
            variants = variants[:3]

        def make(shape_class, shape, normalize, reduction):
            def case(dtype):
                # log-ratios of scale ~0.4: about a third of the samples clip at ε = 0.2
                leaves = {"log_prob": Leaf(shape, scale=0.3), "prev_log_prob": Leaf(shape, scale=0.3, grad=False),
                          "advantage": Leaf((*shape, 1), grad=False)}
                if shape_class == "non-contiguous":
                    leaves["log_prob"] = Leaf(shape[::-1], lambda x: x.t(), scale=0.3)
                    leaves["prev_log_prob"] = Leaf((shape[0], 2 * shape[1]), lambda x: x[:, ::2], scale=0.3, grad=False)
                    leaves["advantage"] = Leaf((*shape, 2), lambda x: x[..., :1], grad=False)
                elif shape_class.startswith("stride-0"):
                    leaves["advantage"] = Leaf((shape[0], 1, 1), lambda x: x.expand(*shape, 1), grad=False)
                exclude = (-2,) if normalize == "per-agent" and len(shape) > 1 else ()
                # The exact ε's bounds: the functional makes them in float64 for float64 inputs,
                # in float32 otherwise, 1e-8 apart (well inside float32's tolerance).
                low, high = clip_bounds(0.2, torch.zeros((), dtype=torch.float64))

                def fn(log_prob, prev_log_prob, advantage):
                    return ppo_clip_loss(log_prob, prev_log_prob, advantage, clip_epsilon=0.2,
                                         normalize_advantage=normalize != "none",
                                         normalize_advantage_exclude_dims=exclude, reduction=reduction)

                def ref_fn(log_prob, prev_log_prob, advantage):
                    out = clip_naive(log_prob, prev_log_prob, advantage, low.double(), high.double(),
                                     normalize=normalize != "none", exclude_dims=exclude, reduction=reduction)
                    # The magnitudes of the terms the loss and the KL estimate sum (see rel_error).
                    with torch.no_grad():
                        log_weight = log_prob - prev_log_prob
                        adv = advantage
                        if normalize != "none" and advantage.numel() > 1:
                            adv = standardize_advantage(advantage, exclude)
                        gain = (log_weight.exp().unsqueeze(-1) * adv).abs().squeeze(-1)
                        if reduction != "none":
                            out["scale:loss_objective"] = gain.mean() if reduction == "mean" else gain.sum()
                        out["scale:kl_approx"] = log_weight.abs().mean()
                    return out

                return leaves, None, fn, ref_fn, ("loss_objective",), None

            return case

        for shape_class, shape in classes.items():
            for normalize, reduction in variants:
                if shape[0] == 1 and normalize == "per-agent":
                    continue  # one sample per agent: an unbiased std of one element is NaN
                if len(shape) < 2 and normalize == "per-agent":
                    continue
                yield shape_class, f"normalize={normalize} reduction={reduction}", make(
                    shape_class, shape, normalize, reduction)

    def _cases_ppo_critic(self, op):
        torch = self.torch
        from fastmarl.functional import ppo_critic_loss
        from fastmarl.ops.ppo.naive import ppo_critic as critic_naive

        classes = self._ppo_shape_classes("target")
        variants = [("smooth_l1", True, True, "mean"), ("l2", False, False, "sum"), ("l1", True, True, "none")]

        def make(shape_class, shape, loss_type, clip, coeff, reduction):
            def case(dtype):
                full = (*shape, 1)
                leaves = {"value": Leaf(full), "target": Leaf(full, grad=False), "old_value": Leaf(full, grad=False)}
                if shape_class == "non-contiguous":
                    leaves["value"] = Leaf(full[::-1], lambda x: x.permute(*reversed(range(x.ndim))))
                    leaves["target"] = Leaf((*shape, 3), lambda x: x[..., 1:2], grad=False)
                elif shape_class.startswith("stride-0"):
                    leaves["target"] = Leaf((shape[0], 1, 1), lambda x: x.expand(full), grad=False)
                clip_value = torch.tensor(0.2) if clip else None
                coeff_value = torch.tensor(0.7) if coeff else None

                def fn(value, target, old_value):
                    return ppo_critic_loss(value, target, old_value=old_value if clip else None,
                                           clip_value=None if clip_value is None else clip_value.to(value.device),
                                           coeff=None if coeff_value is None else coeff_value.to(value.device),
                                           loss_critic_type=loss_type, reduction=reduction)

                def ref_fn(value, target, old_value):
                    out = critic_naive(target, value, old_value if clip else None,
                                       None if clip_value is None else clip_value.double(),
                                       None if coeff_value is None else coeff_value.double(),
                                       loss_type=loss_type, reduction=reduction)
                    # TorchRL adds the eps of the target's dtype to Var(target): the dtype under
                    # test, not the oracle's float64 (bfloat16's 2**-7 moves EV by ~1.5%).
                    with torch.no_grad():
                        residual = torch.var(target - value, correction=0, dim=0)
                        total = torch.var(target, correction=0, dim=0) + torch.finfo(dtype).eps
                        out["explained_variance"] = 1.0 - residual / total
                    return out

                return leaves, None, fn, ref_fn, ("loss_critic",), None

            return case

        for shape_class, shape in classes.items():
            for loss_type, clip, coeff, reduction in variants:
                variant = f"{loss_type} clip={clip} coeff={coeff} reduction={reduction}"
                yield shape_class, variant, make(shape_class, shape, loss_type, clip, coeff, reduction)

    # -- QMIX

    def _cases_qmix(self, op):
        torch = self.torch
        from fastmarl.functional import qmix_mixer
        from fastmarl.ops.qmix import QMixParams
        from fastmarl.ops.qmix.naive import qmix as qmix_naive

        two_layer = op == "qmix2"
        big = self.size(cpu=(1000, 7, 32, 48), cuda=(4096, 8, 32, 168), interpret=(70, 3, 32, 48),
                        quick=(300, 7, 32, 48))
        # (B, n agents, E, S)
        classes = {
            "B=1": (1, 3, 8, 5), "B=63 n=5 S=37": (63, 5, 20, 37), "B x n = %dx%d E=%d S=%d" % big: big,
            "n=11 S=70 (2 K tiles)": (33, 11, 16, 70), "non-contiguous": (40, 4, 8, 21),
            "stride-0 state": (36, 3, 8, 37),
            "E=160 (torch path)": self.size(cpu=(30, 3, 160, 37), cuda=(30, 3, 160, 37), interpret=(8, 2, 160, 9)),
        }

        def make(shape_class, B, n, E, S):
            H = 24 if two_layer else 0

            def case(dtype):
                first = H or n * E
                # nn.Linear-like scales (U(-1/sqrt(in), 1/sqrt(in))) drawn as normals / sqrt(in)
                # so that abs, ReLU and both ELU branches all see both signs.
                dims = [(first, S), (H or E, S), (E, S), (E, S), (1, E)]
                if H:
                    dims += [(n * E, H), (E, H)]
                names = QMixParams._fields[:len(dims) * 2]
                leaves = {}
                for i, (rows, cols) in enumerate(dims):
                    leaves[names[2 * i]] = Leaf((rows, cols), scale=cols ** -0.5)
                    leaves[names[2 * i + 1]] = Leaf((rows,), scale=cols ** -0.5)
                leaves["q"] = Leaf((B, n))
                leaves["state"] = Leaf((B, S))
                if shape_class == "non-contiguous":
                    leaves["q"] = Leaf((n, B), lambda x: x.t())
                    leaves["state"] = Leaf((B, 2 * S), lambda x: x[:, ::2])
                elif shape_class.startswith("stride-0"):
                    leaves["state"] = Leaf((1, S), lambda x: x.expand(B, S))

                def fn(q, state, **params):
                    return {"q_tot": qmix_mixer(q, state, QMixParams(**params))}

                def ref_fn(q, state, **params):
                    return {"q_tot": qmix_naive(q.unsqueeze(-1), state, QMixParams(**params))}

                def skip(path):
                    if path == "composite" and dtype not in (torch.float32, torch.float64):
                        return "the composite path takes float32 or float64"
                    return None

                return leaves, None, fn, ref_fn, ("q_tot",), skip

            return case

        for shape_class, (B, n, E, S) in classes.items():
            yield shape_class, f"B={B} n={n} E={E} S={S}" + (" H=24" if two_layer else ""), make(shape_class, B, n, E, S)

    # -- speed

    def speed(self) -> list[SpeedRow]:
        """The speed rows of the ops asked for (PPO's clip and critic time together)."""
        rows = []
        for op in self.ops:
            for size in self.speed_sizes(op):
                providers, error, note = self.providers(op, size, compiled=not (self.quick or self.mode == "interpret"))
                ms = self._time(providers, self._rounds())
                if op == "gae" and "copy" in providers:
                    copy_ms = ms.pop("copy")
                    note = (note + f" {gae_bytes(*size) / ms['fastmarl'] / 1e6:.0f} GB/s = "
                            f"{copy_ms / ms['fastmarl']:.0%} of a copy").strip()
                rows.append(SpeedRow(SPEED_NAMES[op], "float32", size_name(op, size), error,
                                     error <= SPEED_TOLERANCE, ms, note))
        return rows

    def speed_sizes(self, op: str) -> list[tuple[int, ...]]:
        """The sizes timed for ``op`` here (none for ``ppo_critic`` and ``qmix2``: PPO's row
        times clip and critic together, QMIX's the one-layer mixer)."""
        cuda = self.mode == "cuda"
        small = self.quick or self.mode == "interpret"
        if op == "gae":
            # [B, T, A]: the tutorial; on CUDA the bandwidth size and rl-triton's call size
            return [(4096, 128, 1)] if cuda and small else [(4096, 512, 8), (4096, 128, 1)] if cuda else \
                [(64, 32, 3)] if small else [(600, 100, 3)]
        if op == "ppo_clip":
            # [N, A]: BenchMARL's VMAS minibatch, and a large one
            return [(4096, 3)] if cuda and small else [(4096, 3), (65536, 8)] if cuda else \
                [(400, 3)] if small else [(4096, 3)]
        if op == "qmix":
            # (B, n): SMAC's 3m and 8m
            return [(4096, 8)] if cuda and small else [(4096, 3), (4096, 8)] if cuda else \
                [(256, 3)] if small else [(4096, 8)]
        return []

    def _time(self, providers: dict[str, Callable], rounds: int, warmup: int = 3) -> dict[str, float]:
        """Median ms per provider, interleaved round by round (drift hits all alike)."""
        torch = self.torch
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        times = {name: [] for name in providers}
        for i in range(warmup + rounds):
            for name, fn in providers.items():
                sync()
                start = time.perf_counter()
                fn()
                sync()
                if i >= warmup:
                    times[name].append(time.perf_counter() - start)
        return {name: 1e3 * sorted(t)[len(t) // 2] for name, t in times.items()}

    def _rounds(self) -> int:
        if self.device.type == "cuda":
            return 30 if self.quick else 100
        return 5 if self.quick else 20

    def providers(self, op: str, size: tuple[int, ...], *, compiled: bool) -> tuple[dict, float, str]:
        """``(providers, error, note)`` for one speed row: callables that run fastmarl
        (``fastmarl``), TorchRL eager (``torchrl``) and, if ``compiled``, ``torch.compile`` of
        TorchRL's math (``torchrl_compiled``; GAE also ``copy``, a copy of as many bytes on
        CUDA), on the same float32 inputs; ``error`` compares fastmarl's results with TorchRL's.
        Also what ``bench/gpu_targets.py`` times."""
        return getattr(self, f"_providers_{op}")(*size, compiled=compiled)

    def _providers_gae(self, B, T, A, *, compiled):
        torch = self.torch
        from torchrl.objectives.value.functional import generalized_advantage_estimate as torchrl_gae

        from fastmarl.functional import generalized_advantage_estimate

        d = self.device
        value, next_value, reward = (torch.randn(B, T, A, 1, device=d) for _ in range(3))
        done = torch.rand(B, T, 1, 1, device=d) < 0.02
        terminated = done & (torch.rand(B, T, 1, 1, device=d) < 0.5)
        args = (value, next_value, reward, *(x.expand(B, T, A, 1) for x in (done, terminated)))
        providers = {
            "fastmarl": lambda: generalized_advantage_estimate(0.99, 0.95, *args, time_dim=1),
            "torchrl": lambda: torchrl_gae(0.99, 0.95, *args, time_dim=1),
        }
        # No compiled peer: torch.compile of TorchRL's loop unrolls its T steps, which takes
        # minutes at these T (T=512 on the CPU machine; bench/bench_gae.py times it up to 512).
        note = "(no compiled peer: it unrolls T steps)" if compiled else ""
        if d.type == "cuda":
            # GAE's bytes (3 values in, 2 out, 2 bool flags) moved by a copy: half read, half written
            src = torch.empty(gae_bytes(B, T, A) // 2, dtype=torch.uint8, device=d)
            dst = torch.empty_like(src)
            providers["copy"] = lambda: dst.copy_(src)
        with torch.no_grad():
            error = max(rel_error(a, e) for a, e in zip(providers["fastmarl"](), providers["torchrl"]()))
        return providers, error, note

    def _providers_ppo_clip(self, N, A, *, compiled):
        # clip + critic together: the PPO loss math of one minibatch, as bench_ppo's ppo-math.
        torch = self.torch
        from fastmarl.functional import clip_bounds, ppo_clip_loss, ppo_critic_loss
        from fastmarl.ops.ppo.naive import ppo_clip as clip_naive
        from fastmarl.ops.ppo.naive import ppo_critic as critic_naive

        d = self.device
        log_prob = (0.3 * torch.randn(N, A, device=d)).requires_grad_()
        value = torch.randn(N, A, 1, device=d).requires_grad_()
        prev = log_prob.detach() + 0.2 * torch.randn(N, A, device=d)
        old_value = value.detach() + 0.3 * torch.randn(N, A, 1, device=d)
        advantage, target = torch.randn(N, A, 1, device=d), torch.randn(N, A, 1, device=d)
        low, high = clip_bounds(0.2, log_prob)
        clip_value, coeff = torch.tensor(0.2, device=d), torch.tensor(1.0, device=d)

        def torchrl_math():
            surrogate = clip_naive(log_prob, prev, advantage, low, high, normalize=True, exclude_dims=(-2,))
            critic = critic_naive(target, value, old_value, clip_value, coeff)
            return surrogate["loss_objective"] + critic["loss_critic"]

        def fastmarl_math():
            surrogate = ppo_clip_loss(log_prob, prev, advantage, clip_epsilon=0.2, normalize_advantage=True,
                                      normalize_advantage_exclude_dims=(-2,))
            critic = ppo_critic_loss(value, target, old_value=old_value, clip_value=clip_value, coeff=coeff)
            return surrogate["loss_objective"] + critic["loss_critic"]

        def step(fn):
            def run():
                loss = fn()
                return (loss.detach(), *torch.autograd.grad(loss, (log_prob, value)))
            return run

        providers = {"fastmarl": step(fastmarl_math), "torchrl": step(torchrl_math)}
        if compiled:
            providers["torchrl_compiled"] = step(torch.compile(torchrl_math))
        error = max(rel_error(a, e) for a, e in zip(providers["fastmarl"](), providers["torchrl"]()))
        return providers, error, ""

    def _providers_qmix(self, B, n, *, compiled):
        torch = self.torch
        from torchrl.modules.models.multiagent import QMixer as TorchRLQMixer

        from fastmarl.modules import QMixer

        d, E, S = self.device, 32, SMAC_STATE[n]
        torch.manual_seed(self.seed)
        ours = QMixer((S,), E, n, d)
        theirs = TorchRLQMixer((S,), E, n, d)
        theirs.load_state_dict(ours.state_dict())
        q, state = torch.randn(B, n, 1, device=d), torch.randn(B, S, device=d)

        def step(mixer, params):
            def run():
                q_leaf = q.detach().requires_grad_()
                out = mixer(q_leaf, state)
                return (out.detach(), *torch.autograd.grad(out.sum(), [q_leaf, *params]))
            return run

        providers = {"fastmarl": step(ours, list(ours.parameters())),
                     "torchrl": step(theirs, list(theirs.parameters()))}
        if compiled:
            providers["torchrl_compiled"] = step(torch.compile(theirs), list(theirs.parameters()))
        error = max(rel_error(a, e) for a, e in zip(providers["fastmarl"](), providers["torchrl"]()))
        return providers, error, ""


SPEED_NAMES = {"gae": "gae fwd", "ppo_clip": "ppo clip+critic", "qmix": "qmix mixer"}
SMAC_STATE = {3: 48, 8: 168}  # SMAC's state width for 3m and 8m (bench/bench_qmix.py)


def size_name(op: str, size: tuple[int, ...]) -> str:
    if op == "gae":
        return "x".join(map(str, size)) + " (BxTxA)"
    if op == "ppo_clip":
        return f"{size[0]}x{size[1]} fwd+bwd"
    return f"B={size[0]} n={size[1]} E=32 S={SMAC_STATE[size[1]]} fwd+bwd"


def gae_bytes(B: int, T: int, A: int) -> int:
    """Bytes GAE must move in float32: 3 inputs and 2 outputs, and two bool flags per step of
    each environment (shared by its agents), as bench/bench_gae.py counts them."""
    return B * T * A * 4 * 5 + 2 * B * T


def torch_randn_like(x, generator, dtype):
    """Standard normals of ``x``'s shape drawn on the CPU, rounded to ``dtype``, as float64."""
    import torch

    return torch.randn(x.shape, generator=generator, dtype=torch.float64).to(dtype).to(torch.float64)


def _flags(shape, pattern: str, generator):
    """``(done, terminated)`` bool tensors: none, all, random, or truncated (done without
    terminated half the time: the trace is cut, the bootstrap kept)."""
    import torch

    if pattern in ("none", "all"):
        done = torch.full(shape, pattern == "all")
        return done, done.clone()
    done = torch.rand(shape, generator=generator) < 0.2
    if pattern == "random":
        return done, done.clone()
    return done, done & (torch.rand(shape, generator=generator) < 0.5)


def _cpu_name() -> str:
    from fastmarl.machine import device_name

    return device_name("cpu")


if __name__ == "__main__":
    sys.exit(main())
