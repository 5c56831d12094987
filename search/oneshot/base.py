"""The one-shot driver framework: ``OneShotDriver``, the ``ONESHOT`` registry and ``run_oneshot``.

One-shot methods (DARTS, SNAS, PARSEC, ENAS) do not fit the ask/tell loop of
:mod:`search.strategies`: they train one weight-sharing supernet and a distribution over
architectures together, and read an architecture off at the end. A driver does one search
*step* at a time (one pass over the training split, or ``max_batches`` batches of it)::

    driver = ONESHOT["darts"](space, dataset, config, seed=0, order=1)
    figures = driver.step()          # {"loss": ..., "val_error": ..., "entropy": ...}
    decisions = driver.derive()      # the space's decisions of the architecture read off now
    js, tensors = driver.state()     # checkpoint: JSON + tensors (safetensors), never pickle

:func:`run_oneshot` (what ``run_search`` hands over to when ``config.strategy`` is a one-shot
driver, so ``archir search --strategy darts|snas|parsec|enas`` works) runs the steps, writes
a checkpoint after each one, and records the derived architecture in the same store as an
ask/tell search: op ``"derive:<driver>"``, no parents, the space's decisions, evaluated by the
same path as every other candidate (:func:`search.evaluators.evaluate_candidate`: trained with
the run's training config, priced, saved), so ``archir gallery`` and ``archir export --best``
work unchanged.

**Weight sharing** (option ``inherit``, default ``true``): the derived candidate starts from the
supernet's trained weights -- :meth:`OneShotDriver.derived_graph` cuts it out of the trained
supernet (``archir.lower.sync_back``, then ``space.derive``: the chosen candidate's params and
BN statistics are copied), the task carries it as plain data (``task["init_graph"]``,
``search.morph.graph_to_data``) and the run's training config (``--epochs``) *fine-tunes* it.
Its metrics add ``inherited_val_error`` (validation error of the inherited weights, before
fine-tuning) and ``inherited = 1``. ``inherit=false`` trains the derived architecture from
scratch (``space.build(decisions)``), as an ask/tell search would. No silent guesses: the
derived graph must have the structure of ``space.build(decisions)`` (``structural_hash``);
where it cannot -- a supernet of another size than the space's networks (PARSEC's
``cells``/``channels``), a supernet whose fixed widths are not the decisions' widths -- the run
is refused before the first step with a ``StrategyError`` whose hint is ``inherit=false``.

**Budget** for one-shot drivers: ``"<N>c"`` is N search *steps* (epochs of the supernet, not
candidates); ``"90s"``/``"10m"`` is wall time, summed over resumed sessions (a step is not
started when less than the mean step time is left). The evaluation of the final derived
architecture comes after the budget (it is the same for every strategy);
``evaluate_every=k`` (option) also records the architecture derived after every k-th step, and
those evaluations count against a time budget. One-shot runs train in the calling process:
``run_search``'s executor is not used.

**Checkpoints**: after each step ``<out>/oneshot/state.safetensors`` (the tensors: supernet
weights, architecture parameters, optimiser buffers, torch's RNG state) and then
``<out>/oneshot/state.json`` (step count, options, numpy RNG state, driver figures, and the
sha256 of the tensor file) are replaced atomically; ``resume=True`` loads them and continues
from the step after, re-evaluating a derived candidate whose evaluation was cut off.

Determinism: all randomness comes from the experiment seed (a numpy Generator and torch's
global RNG, seeded inside ``torch.random.fork_rng``), runs use one thread and deterministic
algorithms, and the RNG states are checkpointed, so a resumed search continues exactly as
an uninterrupted one.

**Devices** (``run_search(..., device=)``, ``archir search --device``; a run-time choice, not part
of the stored experiment, as for ask/tell searches): the driver's supernet, architecture
parameters, optimisers and batches live on ``driver.device`` (``search.train.resolve_device``:
``"auto"`` picks CUDA when present). The train and validation splits are kept resident on the
device when they fit (``search.train.RESIDENT_BYTES``); a larger set stays in pinned host memory
and each batch is copied with ``non_blocking``. Figures are summed on the device and read once
per step, so DARTS', SNAS' and ENAS' weight steps do not synchronise per batch (PARSEC reads its K
importance weights once per batch: which backward passes to skip depends on them; ENAS' rewards
are read per sample, as the controller needs them). ``amp="bf16"`` (the training config's
``amp``, ``--train-opt amp=bf16``) runs the supernet's forward passes under ``torch.autocast``
in bfloat16 (weight steps, first-order architecture steps, validation), except DARTS' unrolled
second-order gradient, whose central differences at ``w +- eps * v`` would drown in bfloat16's
rounding: it stays float32. ``amp="fp16"`` is refused (``ConfigError``): the architecture steps
take ``torch.autograd.grad`` of unscaled losses (DARTS' first and second order), so a
``GradScaler`` would have to be threaded through every driver's own update. ENAS' controller
is the exception that stays on the CPU: a 32-unit LSTM that samples one decision at a time and
reads each back (``int(...)``), so on a GPU every decision would be a kernel launch and a
synchronisation; it draws from its own CPU ``torch.Generator``, which also keeps its samples
the same on every device. On CUDA the run is deterministic only with ``--train-opt
deterministic=true`` (cuDNN/cuBLAS flags as in ``search.train``); the CPU always is, bit-exact.
Checkpoints always hold CPU tensors (:func:`save_checkpoint` refuses any other) and load onto
the run's device, so a search checkpointed on a GPU resumes on the CPU and vice versa (the CPU
RNG state travels; CUDA's RNG state is restored only on CUDA). ``derive()`` and
:meth:`OneShotDriver.derived_graph` give CPU data (numpy weights, as archir graphs hold).

Adding a driver: subclass :class:`OneShotDriver`, set ``name`` and ``OPTIONS`` (its own
keyword options with defaults; :data:`COMMON_OPTIONS` are added), implement ``step`` and
``derive`` and list what to checkpoint in ``modules()``/``optimizers()``/``extra_state()``,
decorate it with :func:`register_oneshot`, and put the module in ``search/oneshot/`` (every
module there is imported by ``search.oneshot``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import weakref
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from search.config import ConfigError
from search.strategies.base import StrategyError, register_named

__all__ = ["OneShotDriver", "ONESHOT", "register_oneshot", "get_oneshot", "run_oneshot", "COMMON_OPTIONS",
           "decisions_from_probs", "categorical_entropy", "PeakMemory", "train_step_peak", "driver_step_peak",
           "CHECKPOINT_DIR", "load_checkpoint", "save_checkpoint", "optimizer_state", "load_optimizer_state"]

#: options every one-shot driver takes (``--strategy-opt KEY=VALUE`` on the command line).
COMMON_OPTIONS: dict[str, Any] = {
    "batch_size": 64,       # search batch size (train and val batches)
    "max_batches": 0,       # batches per step (0: one pass over the training split)
    "evaluate_every": 0,    # also record the architecture derived after every k-th step (0: only at the end)
    # fine-tune the derived architecture from the supernet's trained weights (false: train it from scratch).
    # Default true: that is what weight sharing is for (DESIGN.md: a one-shot result can be fine-tuned without
    # retraining from scratch), and the inherited weights are never worse a start than a random init once
    # fine-tuned with the same epochs; inherited_val_error in the metrics shows what the supernet alone gives.
    "inherit": True,
}
CHECKPOINT_DIR = "oneshot"


# --------------------------------------------------------------------------- helpers shared by drivers


def categorical_entropy(logits: Mapping[str, Any] | list) -> float:
    """Sum over decisions of the entropy (nats) of ``softmax(logits)``; uniform over K options gives ``log K`` each.

    Example:
        >>> round(categorical_entropy({"a": np.zeros(4)}), 4) == round(float(np.log(4)), 4)
        True
    """
    vals = logits.values() if isinstance(logits, Mapping) else logits
    total = 0.0
    for v in vals:
        t = torch.as_tensor(np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v, np.float64))
        p = torch.softmax(t, -1)
        total += float(-(p * torch.log_softmax(t, -1)).sum())
    return total


def decisions_from_probs(space, supernet, probs: Mapping[str, Any], *, drop_zero: bool = False) -> dict:
    """The space's decisions read off per-decision probabilities of a supernet (key -> (K,) array).

    - ``DartsSpace``: per node the two inputs whose strongest non-``none`` op weighs most, each
      with that op (DARTS' derivation: :meth:`DartsSpace.genotype_from_probs`). With ``drop_zero``
      (SNAS: the child is the argmax of every edge, ``none`` deletes the edge) edges whose argmax
      is ``none`` rank after every surviving edge; a genotype has exactly two inputs per node, so
      a node with more survivors keeps the two strongest and one with fewer is filled with the
      strongest deleted edges' best ops (the projection of the SNAS child onto the space).
      Decisions a supernet lacks (no reduction cell in a 2-cell net) count as uniform.
    - ``ChainSpace``: the argmax of every layer (``skip``: the zero op drops the layer), at the
      supernet's widths.

    Each space says how (``Space.decisions_from_probs``); one without a derivation is refused.

    Raises:
        ValueError: a space without a supernet derivation here.
    """
    try:
        return space.decisions_from_probs(supernet, probs, drop_zero=drop_zero)
    except NotImplementedError:
        pass
    raise StrategyError(f"no supernet derivation for space {type(space).__name__}", hint="use the darts or chain space")


def _cpu(t: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU copy of ``t`` (never ``t`` itself), whatever device ``t`` is on."""
    return t.detach().to("cpu", copy=True).contiguous()


def optimizer_state(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """An optimiser's state as JSON (hyper-parameters, scalar state) and tensors (buffers, copied to the CPU)
    named ``prefix.*``; :func:`load_optimizer_state` puts them back on the parameters' device."""
    sd = opt.state_dict()
    js: dict[str, Any] = {"param_groups": sd["param_groups"], "state": {}}
    tensors: dict[str, torch.Tensor] = {}
    for pid, st in sd["state"].items():
        entry = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{prefix}.{pid}.{k}"] = _cpu(v)
                entry[k] = {"tensor": f"{prefix}.{pid}.{k}"}
            else:
                entry[k] = v
        js["state"][str(pid)] = entry
    return js, tensors


def load_optimizer_state(opt: torch.optim.Optimizer, js: Mapping, tensors: Mapping[str, torch.Tensor]) -> None:
    """Inverse of :func:`optimizer_state` (``Optimizer.load_state_dict`` moves each buffer to its parameter's
    device and dtype, so CPU tensors load onto a CUDA optimiser and back)."""
    state = {}
    for pid, entry in js["state"].items():
        state[int(pid)] = {k: (tensors[v["tensor"]].clone() if isinstance(v, dict) and "tensor" in v else v)
                           for k, v in entry.items()}
    opt.load_state_dict({"param_groups": js["param_groups"], "state": state})


class PeakMemory:
    """Peak bytes of tensor memory allocated on ``device`` while active, beyond what existed before.

    On the CPU (the default) a ``TorchDispatchMode`` counts every storage an op creates when it
    appears and uncounts it when it is freed (a weakref finaliser). On CUDA the caching
    allocator's own counters are exact and cost nothing per op, so they are used instead:
    ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, less
    ``memory_allocated`` at entry (the dispatch mode would see the same storages, slower). Either
    way ``peak`` is the high-water mark of memory allocated by tensors inside the block --
    activations kept for backward, gradients, optimiser buffers -- excluding what existed
    before (the weights). Used for per-step memory of drivers.

    Args:
        device: where to count (``"cpu"``, ``"cuda:0"``, a ``torch.device``).

    Example:
        >>> with PeakMemory() as m:
        ...     y = (torch.ones(256) * 2).sum()
        >>> m.peak >= 256 * 4
        True
    """

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.current = 0
        self.peak = 0
        self._live: dict[int, Any] = {}
        self._mode = None
        self._base = 0

    def _free(self, key: int, n: int) -> None:
        self.current -= n
        self._live.pop(key, None)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                        st = t.untyped_storage()
                        n = st.nbytes()
                        key = st.data_ptr()
                        if n == 0 or key in tracker._live:
                            continue
                        tracker.current += n
                        tracker.peak = max(tracker.peak, tracker.current)
                        tracker._live[key] = weakref.finalize(st, tracker._free, key, n)
                return out

        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = max(0, torch.cuda.max_memory_allocated(self.device) - self._base)
            self.current = torch.cuda.memory_allocated(self.device) - self._base
            return
        self._mode.__exit__(*exc)
        for fin in list(self._live.values()):
            fin.detach()
        self._live.clear()


def train_step_peak(graph, x: torch.Tensor, y: torch.Tensor, *, lr: float = 0.05, momentum: float = 0.9,
                    device: str | torch.device = "cpu") -> int:
    """Peak bytes (:class:`PeakMemory`) of one SGD training step of the plain ``graph`` on ``(x, y)`` on ``device``.

    The baseline of a one-shot step's memory: a warm-up step first (momentum buffers exist
    afterwards, as in a running search), then the measured one.
    """
    from archir.lower import to_fx

    dev = torch.device(device)
    gm = to_fx(graph).to(dev)
    gm.train()
    x, y = x.to(dev), y.to(dev)
    opt = torch.optim.SGD(gm.parameters(), lr=lr, momentum=momentum)

    def one() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(gm(x), y).backward()
        opt.step()

    one()
    with PeakMemory(dev) as m:
        one()
    return m.peak


def driver_step_peak(driver: "OneShotDriver") -> int:
    """Peak bytes (:class:`PeakMemory` on the driver's device) of one search step of ``driver`` on a single
    batch (after a warm-up step)."""
    saved = driver.options["max_batches"]
    driver.options["max_batches"] = 1
    try:
        driver.step()
        with PeakMemory(driver.device) as m:
            driver.step()
    finally:
        driver.options["max_batches"] = saved
    return m.peak


# --------------------------------------------------------------------------- the driver base class


class OneShotDriver(ABC):
    """Base class of one-shot search drivers (see the module docstring).

    Args:
        space: the search space (``search.spaces.Space``).
        dataset: a ``search.data.Dataset`` (train split: weights; val split: architecture / rewards).
        config: the ``search.experiment.ExperimentConfig`` (objective, training config, ...).
        seed: the experiment seed.
        run_dir: the run folder (files a driver keeps there, e.g. SNAS' latency table), or None.
        device: where the supernet trains (``"cpu"``, ``"auto"``, ``"cuda"``, ``"cuda:N"``; see the module
            docstring). Not an option: a run-time choice, not stored with the experiment.
        amp: ``None`` (float32) or ``"bf16"`` (autocast for the supernet's forward passes).
        **options: the driver's options (``OPTIONS`` and :data:`COMMON_OPTIONS`).

    Attributes:
        steps_done: search steps finished so far.
        rng: the driver's numpy Generator (checkpointed).
        options: the options in effect.
        device: the ``torch.device`` everything trains on; amp: the autocast dtype's name or None.
        x_train, y_train, x_val, y_val: the splits as tensors (on ``device`` when they fit there).

    Raises:
        StrategyError: an unknown option or a bad value. ConfigError: ``amp="fp16"`` or another unknown
        amp. search.train.DeviceError: the device cannot be used here.
    """

    name: ClassVar[str] = ""
    OPTIONS: ClassVar[dict[str, Any]] = {}

    def __init__(self, space, dataset, config, seed: int = 0, *, run_dir: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", amp: str | None = None, **options) -> None:
        from search.train import RESIDENT_BYTES, resolve_device

        if amp == "fp16":
            raise ConfigError(f"strategy {self.name!r} cannot train its supernet with amp='fp16': the architecture "
                              "steps take gradients of unscaled losses (torch.autograd.grad), which fp16 needs a "
                              "GradScaler for", hint="use --train-opt amp=bf16 (or no amp) with a one-shot strategy")
        if amp is not None and amp != "bf16":
            raise ConfigError(f"strategy {self.name!r}: amp={amp!r} is not None or 'bf16'",
                              hint="use --train-opt amp=bf16, or leave amp out")
        self.device = resolve_device(str(device))
        self.amp = amp
        if getattr(space, "seeds", None):
            raise StrategyError(f"strategy {self.name!r} is one-shot: it trains a supernet and does not start from "
                                "given architectures (--start-genotype)",
                                hint="use --strategy evolution or random with --start-genotype, or drop it")
        known = {**COMMON_OPTIONS, **self.OPTIONS}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise StrategyError(f"strategy {self.name!r}: unknown option(s) {unknown}",
                                  hint=f"its options are {sorted(known)}")
        self.options = {**known, **options}
        for k in ("batch_size",):
            self._check_int(k, 1)
        for k in ("max_batches", "evaluate_every"):
            self._check_int(k, 0)
        if not isinstance(self.options["inherit"], (bool, np.bool_)):
            raise StrategyError(f"strategy {self.name!r}: option inherit={self.options['inherit']!r} must be "
                                  "true or false", hint="--strategy-opt inherit=true (or inherit=false)")
        self.options["inherit"] = bool(self.options["inherit"])
        self.space, self.dataset, self.config, self.seed = space, dataset, config, int(seed)
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.rng = np.random.default_rng([int(seed), 9])
        self.steps_done = 0
        splits = [torch.from_numpy(np.array(dataset.x_train, dtype=np.float32)),
                  torch.from_numpy(np.array(dataset.y_train, dtype=np.int64)),
                  torch.from_numpy(np.array(dataset.x_val, dtype=np.float32)),
                  torch.from_numpy(np.array(dataset.y_val, dtype=np.int64))]
        # resident on the device when the images fit (batches are then indexed there); else pinned host memory
        self.resident = self.device.type == "cpu" or (splits[0].numel() + splits[2].numel()) * 4 <= RESIDENT_BYTES
        if self.resident:
            splits = [t.to(self.device) for t in splits]
        elif self.device.type == "cuda":
            splits = [t.pin_memory() for t in splits]
        self.x_train, self.y_train, self.x_val, self.y_val = splits

    # ---------------------------------------------------------------- option checks

    def _check_int(self, key: str, lo: int) -> int:
        v = self.options[key]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise StrategyError(f"strategy {self.name!r}: option {key}={v!r} must be an int >= {lo}",
                                  hint=f"e.g. --strategy-opt {key}={max(lo, COMMON_OPTIONS.get(key, lo) or lo)}")
        return int(v)

    def _check_num(self, key: str, lo: float = 0.0, *, strict: bool = False, hi: float | None = None) -> float:
        v = self.options[key]
        ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v) \
            and (v > lo if strict else v >= lo) and (hi is None or v <= hi)
        if not ok:
            rng = f"{'>' if strict else '>='} {lo}" + ("" if hi is None else f" and <= {hi}")
            raise StrategyError(f"strategy {self.name!r}: option {key}={v!r} must be a number {rng}",
                                  hint=f"e.g. --strategy-opt {key}={self.OPTIONS.get(key, COMMON_OPTIONS.get(key))}")
        return float(v)

    # ---------------------------------------------------------------- what a driver implements

    @abstractmethod
    def step(self) -> dict:
        """One search step (an epoch, or ``max_batches`` batches); returns progress figures
        (``loss``, ``val_error``, ``entropy`` or ``reward``, ...: floats)."""

    @abstractmethod
    def derive(self) -> dict:
        """The space's (canonical) decisions of the architecture the search reads off now."""

    def entropy(self) -> float:
        """The entropy (nats) of the current distribution over architectures (progress display)."""
        return float("nan")

    def modules(self) -> dict[str, torch.nn.Module]:
        """Modules whose state is checkpointed (name -> module)."""
        return {}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimisers whose state is checkpointed (name -> optimiser)."""
        return {}

    def extra_state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """Anything else to checkpoint: JSON and tensors (names must not contain ``/``)."""
        return {}, {}

    def load_extra_state(self, js: Mapping, tensors: Mapping[str, torch.Tensor]) -> None:
        """Inverse of :meth:`extra_state`."""

    # ---------------------------------------------------------------- weight sharing (option inherit)

    def trained_supernet(self):
        """The supernet graph (``self.supernet``) with the trained weights, BN statistics and logits of the
        module ``modules()["supernet"]`` (``archir.lower.sync_back``); ``self.supernet`` is untouched.

        A driver whose supernet lives elsewhere overrides this.
        """
        from archir.lower import sync_back

        return sync_back(self.supernet, self.modules()["supernet"])

    def derived_graph(self, decisions: Mapping):
        """Architecture ``decisions`` cut out of the trained supernet: ``space.derive(trained_supernet(), d)``,
        a plain graph with the supernet's weights of the chosen candidates (what ``inherit`` fine-tunes).

        Raises:
            StrategyError: the derived graph would not have the structure of ``space.build(decisions)``
                (e.g. a supernet of another size, or fixed widths that are not the decisions'); the hint
                is ``inherit=false``.

        Example:
            >>> g = driver.derived_graph(driver.derive())         # doctest: +SKIP
            >>> g.structural_hash() == space.build(driver.derive()).structural_hash()   # doctest: +SKIP
            True
        """
        d = self.space.decode(decisions)
        hint = "--strategy-opt inherit=false (train the derived architecture from scratch)"
        try:
            g = self.space.derive(self.trained_supernet(), d)
        except ValueError as e:  # DecisionError, IRError: the supernet cannot express these decisions
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise StrategyError(f"strategy {self.name!r}, option inherit: cannot derive {self.space.describe(d)} "
                                  f"from the supernet: {msg}", hint=hint) from None
        with torch.random.fork_rng(devices=[]):
            built = self.space.build(d)
        have, want = g.structural_hash(), built.structural_hash()
        if have != want:
            raise StrategyError(
                f"strategy {self.name!r}, option inherit: the supernet {self.supernet.name!r} cannot give the "
                f"space's networks: an architecture derived from it ({len(g)} nodes, structural hash {have[:12]}) "
                f"is not the space's network of the same decisions ({built.name!r}, {len(built)} nodes, "
                f"{want[:12]}), e.g. a supernet of another size than the space's", hint=hint)
        return g

    def check_inherit(self) -> None:
        """Refuse ``inherit=true`` up front (before any step) where the supernet cannot give the space's
        networks: derives a probe architecture (uniform probabilities) and checks it (:meth:`derived_graph`).

        Raises:
            StrategyError: see :meth:`derived_graph`.
        """
        from archir import decision_keys

        keys = decision_keys(self.supernet)
        try:
            probe = decisions_from_probs(self.space, self.supernet, {k: np.ones(len(v)) for k, v in keys.items()})
        except ValueError:
            return  # no generic probe for this space: every derived candidate is still checked by derived_graph
        self.derived_graph(probe)

    # ---------------------------------------------------------------- shared machinery

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` on the driver's device (itself when it is there already; a ``non_blocking`` copy from pinned memory)."""
        if t.device == self.device:
            return t
        if self.device.type == "cuda" and not t.is_pinned():
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    def autocast(self):
        """The context of the supernet's forward passes: ``torch.autocast`` in bfloat16 with ``amp="bf16"``, else none."""
        if self.amp is None:
            import contextlib

            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def zeros(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """A 0-d accumulator on the device (figures are summed there and read once per step)."""
        return torch.zeros((), dtype=dtype, device=self.device)

    def batches(self, split: str = "train") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled mini-batches of ``split`` (``"train"``/``"val"``) from ``self.rng``: :meth:`steps_per_epoch`
        of them (one pass over the training split, or ``max_batches``), cycling through the split -- so a
        smaller validation split still gives one batch per training batch (DARTS pairs them)."""
        x, y = (self.x_train, self.y_train) if split == "train" else (self.x_val, self.y_val)
        bs = int(self.options["batch_size"])
        n = len(y)
        total = self.steps_per_epoch()
        done = 0
        while done < total:
            order = torch.from_numpy(self.rng.permutation(n)).to(x.device)
            for s in range(0, n, bs):
                if done >= total:
                    return
                idx = order[s:s + bs]
                yield self.to_device(x[idx]), self.to_device(y[idx])
                done += 1

    def steps_per_epoch(self) -> int:
        """Batches in one step."""
        return self.options["max_batches"] or math.ceil(len(self.y_train) / int(self.options["batch_size"]))

    def val_error(self, module: torch.nn.Module) -> float:
        """Error of ``module`` on the validation split (its first ``max_batches * batch_size`` samples when
        ``max_batches`` is set: tiny searches stay tiny)."""
        n = len(self.y_val)
        if self.options["max_batches"]:
            n = min(n, int(self.options["max_batches"]) * int(self.options["batch_size"]))
        return self.error_of(module, self.x_val[:n], self.y_val[:n])

    def error_of(self, module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
        """Classification error of ``module`` (on the driver's device) on ``(x, y)``, under :meth:`autocast`
        (eval mode restored to train mode after)."""
        was = module.training
        module.eval()
        wrong = self.zeros(torch.int64)
        with torch.no_grad():
            for i in range(0, len(y), batch_size):
                with self.autocast():
                    out = module(self.to_device(x[i:i + batch_size]))
                wrong += (out.argmax(1) != self.to_device(y[i:i + batch_size])).sum()
        module.train(was)
        return int(wrong) / max(1, len(y))

    def state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """The driver's checkpoint: a JSON-able dict and a dict of tensors (for safetensors)."""
        tensors: dict[str, torch.Tensor] = {}
        for name, m in self.modules().items():
            for k, v in m.state_dict().items():
                tensors[f"module/{name}/{k}"] = _cpu(v)
        opts = {}
        for name, opt in self.optimizers().items():
            js, ts = optimizer_state(opt, f"optim/{name}")
            opts[name] = js
            tensors.update(ts)
        extra_js, extra_ts = self.extra_state()
        tensors.update({f"extra/{k}": _cpu(v) for k, v in extra_ts.items()})
        tensors["rng/torch"] = torch.get_rng_state()
        if self.device.type == "cuda":
            tensors["rng/cuda"] = torch.cuda.get_rng_state(self.device)
        js = {"driver": self.name, "device": str(self.device), "options": self.options, "steps_done": self.steps_done,
              "rng": self.rng.bit_generator.state, "optimizers": opts, "extra": extra_js}
        return json.loads(json.dumps(js)), tensors

    def load_state(self, js: Mapping, tensors: Mapping[str, torch.Tensor]) -> None:
        """Restore :meth:`state` (the driver must have been built with the same space, config and options)
        onto the driver's device, whichever device wrote it: CPU tensors are copied into the modules and
        optimisers where they live; CUDA's RNG state is restored when both are on CUDA.

        Raises:
            ValueError: the checkpoint belongs to another driver or misses tensors.
        """
        if js.get("driver") != self.name:
            raise ValueError(f"checkpoint is of driver {js.get('driver')!r}, not {self.name!r}")
        for name, m in self.modules().items():
            pre = f"module/{name}/"
            sd = {k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}
            missing = sorted(set(m.state_dict()) - set(sd))
            if missing:
                raise ValueError(f"checkpoint lacks {len(missing)} tensor(s) of module {name!r}, e.g. {missing[:3]}")
            m.load_state_dict(sd)
        for name, opt in self.optimizers().items():
            load_optimizer_state(opt, js["optimizers"][name], tensors)
        self.load_extra_state(js.get("extra", {}), {k[6:]: v for k, v in tensors.items() if k.startswith("extra/")})
        self.steps_done = int(js["steps_done"])
        self.rng.bit_generator.state = js["rng"]
        torch.set_rng_state(tensors["rng/torch"])
        if self.device.type == "cuda" and "rng/cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng/cuda"], self.device)


ONESHOT: dict[str, type[OneShotDriver]] = {}


def register_oneshot(cls: type[OneShotDriver]) -> type[OneShotDriver]:
    """Class decorator: make ``cls`` available as ``--strategy <cls.name>``."""
    return register_named(ONESHOT, cls, "one-shot driver")


def get_oneshot(name: str) -> type[OneShotDriver]:
    """The driver class called ``name`` (``StrategyError`` if unknown)."""
    if name not in ONESHOT:
        raise StrategyError(f"unknown one-shot strategy {name!r}", hint=f"choose one of {sorted(ONESHOT)}")
    return ONESHOT[name]


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(run_dir: str | os.PathLike, js: Mapping, tensors: Mapping[str, torch.Tensor]) -> Path:
    """Write ``<run_dir>/oneshot/state.safetensors`` then ``state.json`` (both atomically; the JSON holds
    the tensor file's sha256, so a crash between the two is detected on load). Returns the JSON path.

    Raises:
        StoreError: a tensor is not on the CPU (a checkpoint must load on every machine, GPU or not).
    """
    from safetensors.torch import save

    from archir.serialize import atomic_write

    from search.store import StoreError

    d = Path(run_dir) / CHECKPOINT_DIR
    off = sorted(k for k, v in tensors.items() if v.device.type != "cpu")
    if off:  # a checkpoint must load on any machine: OneShotDriver.state() copies everything to the CPU
        raise StoreError(f"one-shot checkpoint: {len(off)} tensor(s) are not on the CPU, e.g. {off[0]!r} on "
                         f"{tensors[off[0]].device}", file=d,
                         hint="copy them with .cpu() first (OneShotDriver.state() does), so any machine can resume")
    d.mkdir(parents=True, exist_ok=True)
    blob = save({k: v.contiguous() for k, v in tensors.items()})
    atomic_write(d / "state.safetensors", blob)
    doc = {"format": "archir-oneshot-checkpoint", "version": 1, "tensors_sha256": hashlib.sha256(blob).hexdigest(),
           "state": js}
    atomic_write(d / "state.json", json.dumps(doc, sort_keys=True).encode())
    return d / "state.json"


def load_checkpoint(run_dir: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """The checkpoint of ``run_dir`` as ``(json, tensors)`` (CPU tensors), or None when there is none.

    Raises:
        StoreError: the files are unreadable or do not belong together.
    """
    from safetensors.torch import load

    from search.store import StoreError

    d = Path(run_dir) / CHECKPOINT_DIR
    if not (d / "state.json").exists():
        return None
    try:
        doc = json.loads((d / "state.json").read_text())
        blob = (d / "state.safetensors").read_bytes()
    except (OSError, ValueError) as e:
        raise StoreError(f"cannot read the one-shot checkpoint: {e}",
                         file=d, hint="start a new run (another --out folder)") from None
    if doc.get("format") != "archir-oneshot-checkpoint" or hashlib.sha256(blob).hexdigest() != doc.get(
            "tensors_sha256"):
        raise StoreError("state.json and state.safetensors do not belong together",
                         file=d, hint="start a new run (another --out folder)")
    return doc["state"], load(blob)


# --------------------------------------------------------------------------- the run


def run_oneshot(config, out: str | os.PathLike, *, resume: bool = False, progress=None,
                on_candidate: Callable | None = None, on_step: Callable[[OneShotDriver, dict], None] | None = None,
                device: str = "cpu"):
    """Run (or resume) a one-shot search into the run folder ``out``; see the module docstring.

    Args:
        config: a ``search.experiment.ExperimentConfig`` whose ``strategy`` is in :data:`ONESHOT`
            (``strategy_options``: the driver's options).
        out: the run folder (``search.db``, ``graphs/``, ``oneshot/``).
        resume: continue from the checkpoint in ``out``.
        progress: a ``search.experiment.Progress`` (default: none).
        on_candidate: called with every recorded finished candidate.
        on_step: called with ``(driver, figures)`` after every step (tests, benchmarks).
        device: where the supernet and the derived candidates train (``"cpu"``, ``"auto"``, ``"cuda"``,
            ``"cuda:N"``); a run-time choice, not stored: a run checkpointed on one device resumes on any.
            The supernet's autocast is the training config's ``amp`` (``None`` or ``"bf16"``); on CUDA its
            ``deterministic`` sets cuDNN/cuBLAS flags as in ``search.train``.

    Returns:
        A ``search.experiment.SearchSummary``.

    Raises:
        ConfigError, StrategyError: bad options (``amp="fp16"``). StoreError: ``out`` holds a search (without
        ``resume``), none (with ``resume``), another experiment, or a broken checkpoint.
        search.train.DeviceError: the device cannot be used here.
    """
    from dataclasses import replace

    from search.run import SearchRun
    from search.train import cuda_flags, resolve_device

    dev = resolve_device(device)  # a DeviceError before anything is loaded or written
    cuda = dev.type == "cuda"
    amp = dict(config.train).get("amp")
    deterministic = bool(dict(config.train).get("deterministic", False))
    # one supernet and no candidates to schedule: the config is stored without the scheduling option, as
    # before it existed, whichever was given
    run = SearchRun(replace(config, scheduling="sync"), out, progress=progress, on_candidate=on_candidate,
                    device=device)
    cls = get_oneshot(run.config.strategy)
    run.check_folder(resume, extend=False)

    threads = torch.get_num_threads()
    det, det_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(1)
    if not cuda or deterministic:  # CUDA: opt-in, as for search.train (the CPU always is)
        torch.use_deterministic_algorithms(True, warn_only=True)
    restore_flags = cuda_flags(dev, deterministic)
    forked = [dev.index if dev.index is not None else torch.cuda.current_device()] if cuda else []
    try:
        with torch.random.fork_rng(devices=forked):
            torch.manual_seed(int(np.random.SeedSequence([int(config.seed), 9]).generate_state(1)[0]))
            driver = cls(run.space, run.dataset, run.config, seed=int(config.seed), run_dir=run.run_dir,
                         device=dev, amp=amp, **dict(config.strategy_options))
            if driver.options["inherit"]:
                with torch.random.fork_rng(devices=forked):
                    driver.check_inherit()  # refuse before any step (and before the store is made)
            run.open(resume)
            try:
                return _loop(run, driver, resume, on_step, device)
            finally:
                run.close()
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det, warn_only=det_warn)
        restore_flags()


def _loop(run, driver, resume: bool, on_step, device: str):
    from search.config import Budget, candidate_seed, fmt_time, one_line
    from search.evaluators import evaluate_candidate
    from search.store import Candidate, StoreError

    config, run_dir, store, space, budget, progress = run.config, run.run_dir, run.store, run.space, run.budget, \
        run.progress
    # every step's figures (loss, val_error, entropy, ...), kept across resumes: archir report charts them
    history = list((store.info("oneshot") or {}).get("history") or []) if resume else []
    store.set_info("oneshot", {"driver": driver.name, "history": history})
    resumed = 0
    if resume:
        ck = load_checkpoint(run_dir)
        if ck is not None:
            try:
                driver.load_state(*ck)
            except (ValueError, KeyError, RuntimeError) as e:
                raise StoreError(f"cannot resume from the one-shot checkpoint: {one_line(e)}", file=run_dir,
                                 hint="start a new run (another --out folder) with this version of archir") from None
        resumed = sum(c.finished for c in store.candidates())
        was = ck[0].get("device", "cpu") if ck is not None else str(driver.device)
        moved = "" if was == str(driver.device) else f"; checkpointed on {was}, continuing on {driver.device}"
        progress.line(f"resumed {run_dir}: {driver.steps_done} search steps done, {resumed} derived candidates kept, "
                      f"{len(run.requeued)} re-queued; {fmt_time(store.elapsed_s)} spent before{moved}")
    bud = f"{int(budget.value)} search steps" if budget.kind == "candidates" else f"{budget} of search steps"
    opts = ", ".join(f"{k}={v}" for k, v in sorted(driver.options.items()))
    progress.line(f"search: space {config.space}, one-shot strategy {config.strategy} ({opts}), objective "
                  f"{config.objective}, budget {bud}, dataset {config.dataset}, seed {config.seed}, device "
                  f"{driver.device}{' (bf16)' if driver.amp else ''}, run folder {run_dir}")
    elapsed, tick = run.elapsed, run.clock.tick
    step_times: list[float] = []

    def evaluate(c) -> None:
        store.mark_running([c.id])
        task = {**run.task(c), "device": device}  # the derived candidate trains where the supernet did
        with torch.random.fork_rng(devices=[]):  # training must not move the search's RNG (train forks CUDA's)
            if driver.options["inherit"]:  # start from the supernet's weights (weight sharing), fine-tune
                if c.round != driver.steps_done:
                    raise StoreError(f"candidate {c.id} was derived after step {c.round} but the "
                                     f"supernet is at step {driver.steps_done}; its inherited weights are gone",
                                     file=run_dir, hint="start a new run (another --out folder)")
                from search.spaces.start import graph_to_data

                task["init_graph"] = graph_to_data(driver.derived_graph(c.decisions))
            res = evaluate_candidate(task)
        run.record(c, res)
        run.finished(c, store.candidates(), budget=shown, describe=space.describe(c.decisions))

    def record(step_no: int) -> None:
        if any(c.round == step_no for c in store.candidates()):
            return  # recorded before a resume
        d = driver.derive()
        cid = store.next_id()
        c = Candidate(id=cid, round=step_no, op=f"derive:{driver.name}", decisions=space.encode(d), parents=[],
                      seed=candidate_seed(config.seed, cid))
        store.add([c])
        progress.line(f"step {step_no}: derived {space.describe(d)}; evaluating it as candidate {cid}")
        evaluate(c)

    every = int(driver.options["evaluate_every"])
    shown = budget  # the candidate lines count derived candidates, not steps
    if budget.kind == "candidates":
        n = int(budget.value)
        shown = Budget("candidates", n // every + (1 if n % every else 0) if every else 1)
    for cid in run.requeued:
        evaluate(store.get(cid))
    while True:
        if budget.kind == "candidates":
            if driver.steps_done >= int(budget.value):
                break
        else:
            left = budget.value - elapsed()
            mean = sum(step_times) / len(step_times) if step_times else 0.0
            if left <= 0 or (step_times and left < mean):
                break
        t0 = time.perf_counter()
        figures = driver.step()
        driver.steps_done += 1
        figures = {**figures, "entropy": figures.get("entropy", driver.entropy())}
        js, tensors = driver.state()
        js["figures"] = {k: float(v) for k, v in figures.items()}
        save_checkpoint(run_dir, js, tensors)
        step_times.append(time.perf_counter() - t0)
        tick()
        # after the checkpoint, and keyed by step: a kill in between re-runs the step on resume and
        # replaces its entry rather than adding a second one
        history = [h for h in history if h["step"] < driver.steps_done]
        history.append({"step": driver.steps_done, "elapsed_s": round(elapsed(), 3), **js["figures"]})
        store.set_info("oneshot", {"driver": driver.name, "history": history})
        left_s = (f"{driver.steps_done}/{int(budget.value)} steps" if budget.kind == "candidates"
                  else f"{fmt_time(budget.value - elapsed())} left")
        progress.line(f"[{fmt_time(elapsed())} elapsed, {left_s}] {driver.name} step {driver.steps_done}: "
                      + "  ".join(f"{k} {v:.4g}" for k, v in figures.items()))
        if on_step is not None:
            on_step(driver, figures)
        if every and driver.steps_done % every == 0:
            record(driver.steps_done)
    record(driver.steps_done)
    return run.summary(resumed)


