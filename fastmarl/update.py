"""``UpdateStep``: one gradient step (loss, backward, clipping, optimizer, target update) as one program.

A MARL update step at the sizes users train at is many small ops (the seed tutorial's PPO step,
400 samples x 3 agents: ~1,200 kernels on a GPU), so its cost is dispatch and launch overhead
more than arithmetic. :class:`UpdateStep` owns the whole step so that it can be compiled into
one graph (``compile=True``) and replayed as one CUDA graph (``cudagraph=True``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

from fastmarl import _compat
from fastmarl.distributed import average_gradients

__all__ = ["UpdateStep", "make_optimizer"]

# How cudagraph=True captures the step: "CudaGraphModule" (tensordict.nn.CudaGraphModule around
# the compiled or eager step) or "reduce-overhead" (torch.compile(mode="reduce-overhead"),
# CUDA-graph trees). Chosen without a GPU measurement; see UpdateStep's docstring. Both are
# implemented so that a GPU run of bench/bench_update.py (providers fastmarl_cudagraph and
# fastmarl_reduce_overhead) can settle it by changing this line.
CUDAGRAPH_IMPL = "CudaGraphModule"


def make_optimizer(params, lr: float, *, device=None, compile: bool = False, cudagraph: bool = False,
                   **kwargs) -> torch.optim.Adam:
    """``torch.optim.Adam`` with the flags an :class:`UpdateStep` built with the same ``compile``
    and ``cudagraph`` wants on ``device``; ``kwargs`` (``betas``, ``eps``, flags) override them.

    - Captured (``cudagraph=True``, CUDA): ``capturable=True``, ``foreach=True``: the step
      counters stay on the device and ``step()`` never reads them back to the host.
    - Compiled (``compile=True``): ``foreach=True``. A fused Adam is a graph break (torch wraps
      ``_fused_adam`` in ``torch.compiler.disable``) and was no faster: inside
      ``UpdateStep(compile=True)`` on the CPU machine at the tutorial's 400x3, a fused Adam's
      step ran at 0.99x and 0.93x a ``foreach`` one's (per-round medians of two runs;
      Inductor fuses the ``foreach`` update itself).
    - Eager: ``fused=True``. Measured on the CPU machine (1 thread, other sessions running),
      the tutorial's actor and critic (151,813 parameters in 12 tensors), providers
      interleaved: ``Adam.step()`` took 113 us fused, 286 us ``foreach``, 332 us with torch's
      default for CPU tensors (a loop over tensors).

    Figures: ``python bench/interleaved.py adam:tutorial update-adam:tutorial --threads 1``.
    """
    params = list(params)
    if device is None:
        device = params[0].device if params and isinstance(params[0], torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    if cudagraph and device.type == "cuda":
        flags: dict = {"capturable": True, "foreach": True}
    elif compile or cudagraph:
        flags = {"foreach": True}
    else:
        flags = {"fused": True}
    flags.update(kwargs)
    return torch.optim.Adam(params, lr, **flags)


def _default_loss_keys(out: TensorDictBase) -> list:
    return [key for key in out.keys() if isinstance(key, str) and key.startswith("loss")]


class UpdateStep:
    """One update step of ``loss_module`` and ``optimizer`` on a minibatch, eager, compiled or captured.

    ``metrics = step(minibatch)`` does what a TorchRL training loop does per minibatch:

    1. the loss forward, ``out = loss_module(minibatch)``;
    2. the sum of the ``loss_keys`` entries (default: every entry whose name starts with
       ``"loss"``: ``loss_objective``, ``loss_critic``, ``loss_entropy``, QMIX's ``loss``);
    3. its gradients with respect to the optimizer's parameters, written into their ``.grad``
       (which are zeroed first: one step, no accumulation across calls);
    4. with a ``process_group``, the gradients averaged over its ranks (one all-reduce of the
       flattened gradients, :func:`fastmarl.distributed.average_gradients`), then
       ``torch.nn.utils.clip_grad_norm_(..., max_grad_norm, foreach=True)`` when
       ``max_grad_norm`` is given;
    5. ``optimizer.step()``;
    6. ``after_step()`` when given (e.g. ``SoftUpdate(loss, tau=...).step`` for QMIX's targets).

    It returns a ``TensorDict`` of every entry of ``out`` detached (losses and diagnostics),
    plus ``grad_norm`` (the norm before clipping) when clipping; nothing in the step reads a
    value back to the host (no ``.item()``, no branch on data), so a CUDA step runs
    asynchronously. Entries the loss writes into the minibatch (QMixerLoss's TD-error
    ``priority``) are written into the caller's TensorDict as in eager mode, except under
    ``cudagraph=True``, where the step runs on captured copies of the inputs.

    Args:
        loss_module: a TorchRL-style loss: ``TensorDict`` in, ``TensorDict`` of scalars out.
            fastmarl's and TorchRL's losses both work; fastmarl's (and a network built from
            :class:`fastmarl.modules.MultiAgentMLP`) compile to one graph with no break.
        optimizer: a ``torch.optim`` optimizer over the parameters to train
            (:func:`make_optimizer` builds Adam with the flags each mode wants; a fused
            optimizer is a graph break under ``compile=True``).

    Keyword Args:
        loss_keys: the entries to sum into the objective (default: names starting ``loss``).
        max_grad_norm: clip the gradients' total norm to this value (``None``: no clipping).
        compile: ``torch.compile`` the whole step, forward, backward and optimizer, as one
            graph (``True``, or a dict of ``torch.compile`` keyword arguments). The backward is
            traced as ``torch.autograd.grad`` (``torch._dynamo.config.trace_autograd_ops``,
            set for this step's calls only) and the optimizer step is called past torch's
            two ``graph_break()`` calls in ``Optimizer.step``'s decorator (they exist to
            split an optimizer from an untraced backward, pytorch/pytorch#104053), so that
            with fastmarl's building blocks the step has no graph break: on the seed
            tutorial's PPO step (``tests/test_update.py``) one graph and no recompilation
            over 100 steps; likewise the QMIX step.
        cudagraph: capture the step in a CUDA graph and replay it (CUDA only), built on
            ``tensordict.nn.CudaGraphModule`` (see below). The first call runs as is (and
            compiles, with ``compile=True``), the second runs once more and captures, later
            ones copy the minibatch into the captured input buffers and replay. Every call is
            one step.
        after_step: a callable run at the end of the step, inside the compiled / captured
            program (it must be capture-safe itself: ``SoftUpdate.step`` is).
        process_group: a ``torch.distributed.ProcessGroup`` for data-parallel training: each
            rank calls the step on its own shard and the gradients are averaged over the ranks
            before clipping (a functional collective, inside the compiled graph), so every rank
            takes the same step. Why not ``DistributedDataParallel``: :mod:`fastmarl.distributed`.
            Not with ``cudagraph=True`` (capturing collectives was not tested: no GPU).

    Capture and randomness: the Monte-Carlo entropy samples (``TanhNormal`` has no closed-form
    entropy) and any other random op draw from torch's default generator on each call: fresh
    numbers per call eagerly and compiled (``tests/test_update.py`` checks two compiled calls
    differ), and per replay under CUDA graphs through PyTorch's graph-safe Philox state (the
    generator's offset advances by the graph's total on each replay). With ``compile=True``
    and ``cudagraph=True`` together, Inductor is told ``fallback_random=True`` so that random
    ops are those aten kernels rather than Inductor's own seeds, which TorchRL saw frozen
    across replays of a compiled, captured policy (pytorch/rl#3002, fixed in #4143).

    Why ``CudaGraphModule`` for ``cudagraph=True`` (``CUDAGRAPH_IMPL`` switches to
    ``torch.compile(mode="reduce-overhead")``): no GPU was available to this work, so neither
    was measured. ``CudaGraphModule`` was chosen on what could be checked without one: it is
    what LeanRL's 2.7-6.8x PPO speed-ups used (compile, then ``CudaGraphModule``); its code
    copies a TensorDict minibatch into static buffers explicitly (``update_`` of the captured
    inputs) and captures once after ``warmup`` calls on a side stream; it captures eager code
    too (``cudagraph=True, compile=False``); and it does not depend on the whole step being
    one dynamo graph, which a TorchRL loss is not. ``reduce-overhead`` (CUDA-graph trees)
    needs a break-free, mutation-tolerant graph and manages its own memory pool; it is the
    alternative to measure first on a GPU (``bench/bench_update.py`` has both providers).

    Static shapes: each call should get a minibatch of the same structure (keys, shapes and
    dtypes), e.g. a replay-buffer sample of fixed size; another structure compiles (or
    captures) again, and so does a minibatch the step already wrote a new entry into (reuse
    a QMIX sample and its ``priority`` entry is new the first time only). The gradients are
    preallocated once (zeros) and written in place every step, so that their storage is
    static; a parameter the loss does not reach keeps a zero gradient rather than ``None``
    (Adam steps it with a zero gradient: it stays put while its moments are zero).

    Capturing eager code (``cudagraph=True, compile=False``) needs every op of the step to be
    capture-safe: TorchRL's entropy of a distribution with a closed-form entropy checks
    ``entropy.isfinite().all()`` on the host when not compiling, which a capture rejects; use
    ``compile=True`` there (``TanhNormal``'s Monte-Carlo entropy has no such check).

    Examples:
        >>> optim = make_optimizer(loss.parameters(), 3e-4, compile=True)
        >>> step = UpdateStep(loss, optim, max_grad_norm=1.0, compile=True)
        >>> for _ in range(epochs):
        ...     for _ in range(n_minibatches):
        ...         metrics = step(buffer.sample())
    """

    def __init__(
        self,
        loss_module: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        loss_keys: Sequence | None = None,
        max_grad_norm: float | None = None,
        compile: bool | dict = False,
        cudagraph: bool = False,
        after_step: Callable[[], object] | None = None,
        process_group=None,
    ):
        if not callable(loss_module):
            raise TypeError(f"loss_module must be a callable loss module, got {type(loss_module).__name__}")
        # A torch.optim.Optimizer, or one with its interface (BenchMARL's per-loss optimizers):
        # zero_grad(), step() and param_groups.
        if not (callable(getattr(optimizer, "step", None)) and callable(getattr(optimizer, "zero_grad", None))
                and hasattr(optimizer, "param_groups")):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer (or have its step(), zero_grad() and "
                f"param_groups), got {type(optimizer).__name__}"
            )
        if loss_keys is not None:
            if isinstance(loss_keys, str) or not isinstance(loss_keys, Sequence) or not loss_keys:
                raise TypeError(f"loss_keys must be a non-empty sequence of keys, got {loss_keys!r}")
            loss_keys = list(loss_keys)
        if max_grad_norm is not None:
            if isinstance(max_grad_norm, bool) or not isinstance(max_grad_norm, (int, float)) or not max_grad_norm > 0:
                raise ValueError(f"max_grad_norm must be a positive number or None, got {max_grad_norm!r}")
            max_grad_norm = float(max_grad_norm)
        if not isinstance(compile, (bool, dict)):
            raise TypeError(f"compile must be a bool or a dict of torch.compile arguments, got {compile!r}")
        if after_step is not None and not callable(after_step):
            raise TypeError(f"after_step must be callable or None, got {type(after_step).__name__}")
        if process_group is not None:
            from fastmarl.functional import check_process_group

            check_process_group(process_group)
            if cudagraph:
                raise ValueError("process_group with cudagraph=True is not supported: capturing the gradient "
                                 "all-reduce in a CUDA graph has not been tested (use compile=True)")
        params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        if not params:
            raise ValueError("optimizer has no parameter that requires grad")
        devices = {p.device for p in params}
        if cudagraph:
            if CUDAGRAPH_IMPL not in ("CudaGraphModule", "reduce-overhead"):
                raise ValueError(f"CUDAGRAPH_IMPL must be 'CudaGraphModule' or 'reduce-overhead', got {CUDAGRAPH_IMPL!r}")
            if not torch.cuda.is_available():
                raise ValueError("cudagraph=True needs a CUDA device, and none is available")
            if any(d.type != "cuda" for d in devices) or len(devices) != 1:
                raise ValueError(
                    f"cudagraph=True needs every parameter on one CUDA device, got {sorted(map(str, devices))}"
                )
            self._make_capturable(optimizer)
        self.loss_module = loss_module
        self.optimizer = optimizer
        self.loss_keys = loss_keys
        self.max_grad_norm = max_grad_norm
        self.after_step = after_step
        self.process_group = process_group
        self.compile = bool(compile)
        self.cudagraph = bool(cudagraph)
        self._params = params
        # Static gradient buffers, written in place every step (see the class docstring).
        with torch.no_grad():
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
        self._grads = [p.grad for p in params]
        self._raw_step = None if _compat.optimizer_has_hooks(optimizer) else _compat.raw_optimizer_step(optimizer)
        self._cudagraph_impl = CUDAGRAPH_IMPL
        self._runner = self._build(compile)
        self._memo = _compat.tensorclass_memo() if self._traced() else None
        self._memo_snapshot = None
        self.calls = 0
        """Calls made so far."""
        self.warmup_calls = 2 if self.cudagraph else int(self.compile)
        """Calls that compile or capture before the steady state: the first compiles; under
        ``cudagraph`` the second also captures (``CudaGraphModule`` runs the step once more on
        its side stream, then records it; CUDA-graph trees record on their second call). A
        trainer times these as its compile phase."""

    @staticmethod
    def _make_capturable(optimizer) -> None:
        for group in optimizer.param_groups:
            if "capturable" not in group or group["capturable"]:
                continue
            if any(p in optimizer.state for p in group["params"]):
                raise ValueError(
                    "cudagraph=True needs the optimizer built with capturable=True (its step counters "
                    "on the device); this one has state already, so it cannot be switched here"
                )
            # What torch.compile does for CUDA optimizers without state (OptimizerVariable).
            group["capturable"] = True

    # ------------------------------------------------------------------ the step

    def _optimizer_step(self) -> None:
        if self._raw_step is None:
            self.optimizer.step()
            return
        with torch.no_grad():
            self._raw_step(self.optimizer)

    def _loss_and_gradients(self, minibatch: TensorDictBase):
        """The loss entries (detached) and the objective's gradients. Everything that holds
        the autograd graph is local here, so that none of it outlives the graph's consumption
        by ``autograd.grad`` (dynamo would break the graph before it to keep it alive)."""
        out = self.loss_module(minibatch)
        keys = self.loss_keys if self.loss_keys is not None else _default_loss_keys(out)
        if not keys:
            raise KeyError(f"the loss returned no entry named loss*: {list(out.keys())}; pass loss_keys=")
        terms = [out.get(key, None) for key in keys]
        if any(term is None for term in terms):
            raise KeyError(f"loss_keys {keys} are not all entries of the loss output {list(out.keys())}")
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        metrics = {key: value.detach() for key, value in out.items()}
        return metrics, torch.autograd.grad(total, self._params, allow_unused=True)

    def _step(self, minibatch: TensorDictBase) -> TensorDict:
        metrics, grads = self._loss_and_gradients(minibatch)
        reached = [(buffer, g) for buffer, g in zip(self._grads, grads) if g is not None]
        missed = [buffer for buffer, g in zip(self._grads, grads) if g is None]
        if reached:
            torch._foreach_copy_([b for b, _ in reached], [g for _, g in reached])
        if missed:
            torch._foreach_zero_(missed)
        if self.process_group is not None:
            average_gradients(self._grads, self.process_group)
        if self.max_grad_norm is not None:
            metrics["grad_norm"] = torch.nn.utils.clip_grad_norm_(self._params, self.max_grad_norm, foreach=True)
        self._optimizer_step()
        if self.after_step is not None:
            self.after_step()
        return TensorDict(metrics, batch_size=[])

    def _build(self, compile):
        fn = self._step
        options = dict(compile) if isinstance(compile, dict) else {}
        reduce_overhead = self.cudagraph and self._cudagraph_impl == "reduce-overhead"
        if compile or reduce_overhead:
            options.setdefault("dynamic", False)
            if self.cudagraph and "mode" not in options:
                inductor = dict(options.pop("options", None) or {})
                # Random ops as aten kernels on the default generator (graph-safe Philox).
                inductor.setdefault("fallback_random", True)
                if reduce_overhead:
                    # mode="reduce-overhead", spelled as its option (torch.compile takes a mode
                    # or options, not both).
                    inductor.setdefault("triton.cudagraphs", True)
                options["options"] = inductor
            fn = torch.compile(fn, **options)
        if self.cudagraph and not reduce_overhead:
            from tensordict.nn import CudaGraphModule

            fn = CudaGraphModule(fn, warmup=2, in_keys=[], out_keys=[])
        return fn

    # ------------------------------------------------------------------ calls

    def _reattach_grads(self) -> None:
        # optimizer.zero_grad() (set_to_none) or user code may have dropped the buffers.
        for p, buffer in zip(self._params, self._grads):
            if p.grad is not buffer:
                if p.grad is not None:
                    buffer.copy_(p.grad)
                p.grad = buffer

    def __call__(self, minibatch: TensorDictBase) -> TensorDict:
        if not isinstance(minibatch, TensorDictBase):
            raise TypeError(f"minibatch must be a TensorDict, got {type(minibatch).__name__}")
        self._reattach_grads()
        self._keep_memo()
        self.calls += 1
        if self.cudagraph and self._cudagraph_impl == "reduce-overhead":
            # CUDA-graph trees overwrite a replay's outputs on the next one: mark the step and
            # hand out copies.
            torch.compiler.cudagraph_mark_step_begin()
            with self._tracing_context():
                return self._runner(minibatch).clone()
        with self._tracing_context():
            return self._runner(minibatch)

    def _keep_memo(self) -> None:
        # See fastmarl._compat.tensorclass_memo: the compiled graph guards on its length.
        memo = self._memo
        if memo is None:
            return
        if self._memo_snapshot is None:
            self._memo_snapshot = dict(memo)
        elif len(memo) != len(self._memo_snapshot):
            memo.clear()
            memo.update(self._memo_snapshot)

    def _traced(self) -> bool:
        """Whether dynamo traces the step."""
        return self.compile or (self.cudagraph and self._cudagraph_impl == "reduce-overhead")

    def _tracing_context(self):
        if not self._traced():
            return contextlib.nullcontext()
        return torch._dynamo.config.patch(trace_autograd_ops=True)
