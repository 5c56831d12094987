"""Train one candidate graph: SGD with momentum, cosine annealing or SGDR warm restarts.

``train(graph, dataset, cfg)`` lowers ``graph`` with ``archir.lower.to_fx``, trains it on the
training split (cross-entropy, SGD with Nesterov-free momentum and weight decay, gradient
norm clipped), measures validation and test error in eval mode, and copies the trained
weights back into a new graph with ``archir.lower.sync_back`` (weight inheritance).

Learning rate per step (``t`` = epochs done, fractional within an epoch):

- ``"cosine"``: ``lr_min + (lr - lr_min) * (1 + cos(pi * t / epochs)) / 2`` (Loshchilov & Hutter's
  annealing without restarts, as in DARTS);
- ``"sgdr"``: the same within restart periods of ``sgdr_t0``, ``sgdr_t0 * sgdr_mult``, ...
  epochs, restarting at ``lr`` at each period's start (SGDR, as NASH trains its candidates);
- ``"constant"``: ``lr``.

The DARTS/NASNet evaluation recipe (``archir.training``): a graph with auxiliary outputs
(``g.set_outputs(logits, auxiliary(aux_logits, weight=w))``) trains on
``CE(main) + sum(w_i * CE(aux_i))`` (``train_loss`` in the history and metrics is that total, as
DARTS logs it), while accuracy, validation and test figures use the main output alone. Every
``drop_path`` node's rate is ramped linearly, as DARTS does (``drop_prob = p * epoch / epochs`` at
the start of each epoch, ``epoch`` from 0: no drop-path in the first epoch), with
``archir.lower.set_drop_path(gm, epoch / epochs)``. The trained graph keeps both (its auxiliary
head's weights are trained and synced back too); ``archir.strip_training`` gives the inference
network. A graph without either trains exactly as before.

Determinism: everything random is drawn from ``cfg.seed`` -- batch order from a numpy
Generator, any torch randomness (dropout) inside ``torch.random.fork_rng`` seeded with it --
and deterministic algorithms are switched on for the run, so on CPU the same graph, data and
config give bit-identical weights. ``cfg.threads`` sets torch's intra-op threads for the run;
the previous setting (and global RNG state) is restored afterwards.

Devices and throughput (``device``, ``amp``, ``channels_last``, ``compile``, ``workers``; all off by
default, so CPU results stay bit-identical to earlier releases): ``device="auto"`` picks CUDA when
present, ``"cpu"`` / ``"cuda"`` / ``"cuda:1"`` name one. The module, the batches and the loss live
there; the trained weights are synced back into the graph on the CPU, and the result has the same
structure on every device. A training set that fits (``RESIDENT_BYTES``) is kept resident on the
device and batches are indexed there; a larger one streams through a ``torch.utils.data.DataLoader``
(``workers`` processes, pinned memory, non-blocking copies), which ``workers > 0`` asks for on the CPU
too. On CUDA a NaN/Inf loss is found at the end of the epoch (a per-step check would synchronise
every step, which a plain loop does not do); on the CPU at the step, as before. ``amp="bf16"`` runs
forward and loss under ``torch.autocast`` in bfloat16 (CPU or CUDA); ``amp="fp16"`` needs CUDA and adds a
``GradScaler``. ``deterministic`` matters on CUDA only: ``True`` sets cuDNN's deterministic
mode, turns cuDNN benchmarking off, sets ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (when unset) and
switches torch's deterministic algorithms on; ``False`` (the default) lets cuDNN benchmark, so two CUDA
runs can differ in the last bits. The CPU always runs deterministically. ``compile=True`` wraps the
module in ``torch.compile``; if compiling fails, a ``RuntimeWarning`` says why and training goes on
eagerly.

Augmentation (``augment``: random crop with ``crop_padding`` and horizontal flip; ``cutout``) is
:class:`search.augment.Augment`, drawn from its own ``torch.Generator`` seeded from ``cfg.seed``. The
DARTS evaluation recipe is ``recipe_config("darts")`` (:data:`RECIPES`).

Checkpoints: ``train(..., on_epoch=f)`` calls ``f(info)`` after every epoch; ``info.state()`` is a
:class:`TrainState` (tensors and JSON: weights, optimizer momenta, every RNG state, the history) from
which ``train(..., resume=state)`` continues bit-identically on the CPU (``archir train --resume``).

A bad candidate never raises: a NaN/Inf loss or any exception while lowering, training or
syncing makes ``status == "failed"`` with a one-line ``reason``, and the search goes on.

Example:
    >>> from search.data import load_dataset
    >>> from search.spaces import get_space
    >>> import numpy as np
    >>> ds = load_dataset("digits")
    >>> space = get_space("chain", input_shape=ds.input_shape, num_classes=ds.num_classes)
    >>> g = space.build(space.sample(np.random.default_rng(0)), seed=0)
    >>> res = train(g, ds, TrainConfig(epochs=1))
    >>> res.status, sorted(res.metrics)[:3]
    ('ok', ['test_acc', 'test_error', 'test_loss'])
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
import traceback as _traceback
import warnings
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from archir import Graph
from archir.errors import ArchirError, is_user_error
from archir.lower import set_drop_path, sync_back, to_fx

__all__ = ["TrainConfig", "TrainResult", "TrainState", "EpochInfo", "train", "evaluate", "learning_rate",
           "training_loss", "main_output", "resolve_device", "DeviceError", "TrainConfigError", "RECIPES",
           "recipe_config", "RESIDENT_BYTES", "cuda_flags"]

SCHEDULES = ("cosine", "sgdr", "constant")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: a training set up to this size (bytes of float32 images) is kept resident on a CUDA device
RESIDENT_BYTES = 4 * 2**30

#: the evaluation recipes of ``archir train --recipe`` (TrainConfig fields; ``epochs`` is the caller's)
RECIPES: dict[str, dict[str, Any]] = {
    # DARTS (Liu et al. 2019) / PNAS final training: SGD 0.025 momentum 0.9 wd 3e-4, cosine to 0, batch 96,
    # random crop 4 + flip, cutout 16, drop-path 0.2 ramped linearly, auxiliary weight 0.4, grad clip 5
    "darts": {"lr": 0.025, "lr_min": 0.0, "momentum": 0.9, "weight_decay": 3e-4, "schedule": "cosine",
              "batch_size": 96, "grad_clip": 5.0, "augment": True, "crop_padding": 4, "cutout": 16,
              "drop_path": 0.2, "auxiliary_weight": 0.4},
    # TrainConfig's defaults: SGD 0.05 momentum 0.9 wd 3e-4, cosine, batch 64, grad clip 5, no augmentation,
    # the graph's own drop-path rates and auxiliary weights
    "plain": {},
}


class TrainConfigError(ArchirError, ValueError):
    """A :class:`TrainConfig` field that cannot be used (the message names the field)."""


class DeviceError(ArchirError, RuntimeError):
    """The training device cannot be used here (no CUDA, no such GPU, fp16 on the CPU)."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train one candidate (checked on construction; :class:`TrainConfigError`, a ``ValueError``,
    names the bad field).

    Attributes:
        epochs: passes over the training split.
        batch_size: training batch size (the last, smaller batch is kept).
        lr: peak learning rate; lr_min: the floor of the cosine.
        momentum, weight_decay: SGD settings (weight decay on every parameter).
        schedule: ``"cosine"``, ``"sgdr"`` or ``"constant"`` (see the module docstring).
        sgdr_t0, sgdr_mult: SGDR's first period (epochs) and its growth factor.
        grad_clip: max gradient norm (``None``: no clipping).
        seed: batch order and torch randomness.
        threads: torch intra-op threads during the run.
        eval_batch_size: batch size for val/test evaluation.
        device: ``"cpu"`` (default), ``"auto"`` (CUDA when present), ``"cuda"``, ``"cuda:N"``.
        amp: ``None`` (float32), ``"bf16"`` or ``"fp16"`` (CUDA only; with a GradScaler).
        channels_last: train in the channels-last memory format.
        compile: wrap the module in ``torch.compile`` (eager fallback with a warning).
        deterministic: CUDA only: deterministic cuDNN/cuBLAS (the CPU always is).
        augment: random crop (``crop_padding``) and horizontal flip of every training batch.
        crop_padding: the random crop's padding (with ``augment``).
        cutout: side of the cutout square (0: none).
        drop_path: ``None`` (each ``drop_path`` node's own ``p``) or the peak rate of every one.
        auxiliary_weight: ``None`` (each auxiliary output's own weight) or the weight of every one.
        workers: DataLoader worker processes (0: batches are indexed in this process).
    """

    epochs: int = 3
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 3e-4
    schedule: str = "cosine"
    sgdr_t0: int = 1
    sgdr_mult: int = 2
    seed: int = 0
    threads: int = 1
    lr_min: float = 0.0
    grad_clip: float | None = 5.0
    eval_batch_size: int = 256
    device: str = "cpu"
    amp: str | None = None
    channels_last: bool = False
    compile: bool = False
    deterministic: bool = False
    augment: bool = False
    crop_padding: int = 4
    cutout: int = 0
    drop_path: float | None = None
    auxiliary_weight: float | None = None
    workers: int = 0

    def __post_init__(self) -> None:
        def need(ok: bool, field: str, what: str, hint: str | None = None) -> None:
            if not ok:
                raise TrainConfigError(f"TrainConfig.{field} = {getattr(self, field)!r}: {what}", hint=hint)

        def is_int(v: Any) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)

        for f in ("epochs", "batch_size", "sgdr_t0", "sgdr_mult", "threads", "eval_batch_size"):
            need(is_int(getattr(self, f)) and getattr(self, f) >= 1, f, "must be an int >= 1")
        need(is_int(self.seed), "seed", "must be an int")
        for f in ("lr", "momentum", "weight_decay", "lr_min"):
            need(is_num(getattr(self, f)) and getattr(self, f) >= 0, f, "must be a finite number >= 0")
        need(self.lr > 0, "lr", "must be > 0")
        need(self.lr_min <= self.lr, "lr_min", "must be <= lr")
        need(self.momentum < 1, "momentum", "must be < 1")
        need(self.schedule in SCHEDULES, "schedule", f"must be one of {list(SCHEDULES)}")
        need(self.grad_clip is None or (is_num(self.grad_clip) and self.grad_clip > 0), "grad_clip",
             "must be None or a number > 0")
        need(isinstance(self.device, str) and _parse_device(self.device) is not None, "device",
             "must be 'auto', 'cpu', 'cuda' or 'cuda:N'", hint="e.g. device='cuda:0' (or --device cuda:0)")
        need(self.amp is None or self.amp in AMP_DTYPES, "amp", "must be None, 'bf16' or 'fp16'",
             hint="amp='bf16' (CPU or CUDA) or amp='fp16' (CUDA, with a GradScaler)")
        need(not (self.amp == "fp16" and self.device == "cpu"), "amp", "fp16 autocast needs a CUDA device",
             hint="use amp='bf16' on the CPU, or device='cuda'")
        for f in ("channels_last", "compile", "deterministic", "augment"):
            need(isinstance(getattr(self, f), (bool, np.bool_)), f, "must be True or False")
        for f in ("crop_padding", "cutout", "workers"):
            need(is_int(getattr(self, f)) and getattr(self, f) >= 0, f, "must be an int >= 0")
        need(self.drop_path is None or (is_num(self.drop_path) and 0 <= self.drop_path < 1), "drop_path",
             "must be None or a number in [0, 1)")
        need(self.auxiliary_weight is None or (is_num(self.auxiliary_weight) and self.auxiliary_weight >= 0),
             "auxiliary_weight", "must be None or a number >= 0")

    def to_dict(self) -> dict:
        """The config as a JSON-able dict (for the experiment store)."""
        return dataclasses.asdict(self)


def recipe_config(name: str, **overrides: Any) -> TrainConfig:
    """The :class:`TrainConfig` of recipe ``name`` (:data:`RECIPES`) with ``overrides`` (``epochs=600``, ...).

    Raises:
        TrainConfigError: unknown recipe, or a bad override.

    Example:
        >>> cfg = recipe_config("darts", epochs=600)
        >>> cfg.lr, cfg.batch_size, cfg.cutout, cfg.drop_path, cfg.auxiliary_weight, cfg.grad_clip
        (0.025, 96, 16, 0.2, 0.4, 5.0)
    """
    if name not in RECIPES:
        raise TrainConfigError(f"unknown recipe {name!r}", hint=f"use one of {sorted(RECIPES)}")
    return TrainConfig(**{**RECIPES[name], **overrides})


def _parse_device(text: str) -> tuple[str, int | None] | None:
    if text in ("auto", "cpu", "cuda"):
        return text, None
    kind, _, idx = text.partition(":")
    if kind == "cuda" and idx.isdigit():
        return kind, int(idx)
    return None


def resolve_device(device: str) -> torch.device:
    """The ``torch.device`` that ``device`` (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``) names here.

    Raises:
        DeviceError: CUDA asked for but not available, or no GPU ``N``.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    parsed = _parse_device(device) if isinstance(device, str) else None
    if parsed is None:
        raise DeviceError(f"unknown device {device!r}", hint="use auto, cpu, cuda or cuda:N")
    kind, idx = parsed
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(f"device {device!r}: CUDA is not available here (torch {torch.__version__}, "
                          f"built for CUDA {torch.version.cuda or 'none'})",
                          hint="use --device cpu (or auto), or install a CUDA build of torch on a GPU machine")
    n = torch.cuda.device_count()
    idx = 0 if idx is None else idx
    if idx >= n:
        raise DeviceError(f"device {device!r}: there is no GPU {idx} ({n} visible"
                          f"{', CUDA_VISIBLE_DEVICES=' + os.environ['CUDA_VISIBLE_DEVICES'] if 'CUDA_VISIBLE_DEVICES' in os.environ else ''})",
                          hint=f"use cuda:0 .. cuda:{n - 1}")
    return torch.device("cuda", idx)


@dataclasses.dataclass
class TrainResult:
    """What training one candidate gave.

    Attributes:
        status: ``"ok"`` or ``"failed"``.
        reason: ``None``, or one line saying why it failed.
        metrics: ``train_loss``, ``val_error``, ``val_acc``, ``val_loss``, ``test_error``, ``test_acc``,
            ``test_loss`` (floats; errors and accuracies in [0, 1]; the ``val_`` ones NaN when the
            validation split is empty); empty if failed.
        graph: the graph with trained weights (``None`` if failed).
        epochs: epochs begun (the compute spent, in candidate-epochs).
        seconds: wall time of the whole call.
        history: per finished epoch: ``{"epoch", "train_loss", "val_error", "val_loss", "lr"}`` (``lr`` at
            the epoch's end).
        traceback: when it failed from an exception that is an archir bug (not an
            ``archir.ArchirError`` user error), that exception's traceback; else None.
        train_seconds, train_images: time spent in the training steps of this call (no evaluation)
            and the images they trained on (throughput = ``train_images / train_seconds``).
        device: the device it trained on (``"cpu"``, ``"cuda:0"``).
    """

    status: str
    reason: str | None
    metrics: dict[str, float]
    graph: Graph | None
    epochs: int
    seconds: float
    history: list[dict] = dataclasses.field(default_factory=list)
    traceback: str | None = None
    train_seconds: float = 0.0
    train_images: int = 0
    device: str = "cpu"

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclasses.dataclass
class TrainState:
    """Everything a run needs to continue after epoch ``epoch`` (for checkpoints; no pickle anywhere).

    Attributes:
        epoch: finished epochs.
        tensors: ``model.<name>`` (the module's state dict), ``opt.<i>.<key>`` (optimizer state),
            ``rng.torch`` / ``rng.cuda`` / ``rng.augment`` (RNG states, uint8) -- CPU tensors for safetensors.
        meta: JSON-able: ``history``, ``numpy_rng`` (the batch order's generator), ``python_rng``,
            ``optimizer`` (param groups), ``scaler`` (GradScaler state or None), ``config``.
    """

    epoch: int
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]


@dataclasses.dataclass
class EpochInfo:
    """What ``on_epoch`` gets after each finished epoch.

    Attributes:
        epoch: the epoch just finished (from 1); epochs: of the run.
        record: its history entry.
        stats: ``train_acc``, ``main_loss`` (CE of the main output), ``aux_loss`` (per auxiliary output:
            its unweighted CE), ``aux_weight`` (per auxiliary output), ``drop_path`` (the rate of every
            ``drop_path`` module in this epoch), ``images``, ``seconds``, ``images_per_s``.
        state: ``state()`` gives the :class:`TrainState` to resume from after this epoch.
    """

    epoch: int
    epochs: int
    record: dict
    stats: dict
    state: Callable[[], TrainState]


class _Propagate(Exception):
    """An exception of a caller's callback: ``train`` re-raises the original."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


def learning_rate(cfg: TrainConfig, t: float) -> float:
    """The learning rate after ``t`` epochs (fractional) under ``cfg.schedule``.

    Example:
        >>> cfg = TrainConfig(epochs=3, lr=0.1, schedule="sgdr", sgdr_t0=1, sgdr_mult=2)
        >>> [round(learning_rate(cfg, t), 4) for t in (0, 0.5, 1, 2, 2.999)]
        [0.1, 0.05, 0.1, 0.05, 0.0]
    """
    if cfg.schedule == "constant":
        return float(cfg.lr)
    if cfg.schedule == "cosine":
        frac = min(max(t / cfg.epochs, 0.0), 1.0)
    else:  # sgdr: find the restart period t falls in
        start, period = 0.0, float(cfg.sgdr_t0)
        while t >= start + period:
            start += period
            period *= cfg.sgdr_mult
        frac = (t - start) / period
    return float(cfg.lr_min + (cfg.lr - cfg.lr_min) * 0.5 * (1.0 + math.cos(math.pi * frac)))


def main_output(out: torch.Tensor | tuple) -> torch.Tensor:
    """The main output of a lowered graph's forward: ``out`` itself, or the first of a tuple
    (``(main, aux...)`` for a graph with auxiliary outputs)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def training_loss(out: torch.Tensor | tuple, y: torch.Tensor, auxiliary: dict[int, float] | None = None
                  ) -> torch.Tensor:
    """The classification loss of one batch: ``CE(main) + sum(weight_i * CE(out[i]))``.

    Args:
        out: what the lowered module returned (a tensor, or a tuple with the main output first).
        y: the labels.
        auxiliary: output index -> loss weight (``gm.meta["archir_auxiliary"]``); ``None`` or
            empty: the cross-entropy of the main output alone.

    Example:
        >>> loss = training_loss(gm(x), y, gm.meta["archir_auxiliary"])   # doctest: +SKIP
    """
    loss = F.cross_entropy(main_output(out), y)
    for k, w in sorted((auxiliary or {}).items()):
        loss = loss + float(w) * F.cross_entropy(out[k], y)
    return loss


class _Placement:
    """Where batches go and how: the device, the memory format, autocast."""

    def __init__(self, dev: torch.device, channels_last: bool, amp: str | None) -> None:
        self.dev = dev
        self.cuda = dev.type == "cuda"
        self.channels_last = channels_last
        self.amp = amp

    def x(self, xb: torch.Tensor) -> torch.Tensor:
        if xb.device != self.dev:
            xb = xb.to(self.dev, non_blocking=True)
        if self.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        return xb

    def y(self, yb: torch.Tensor) -> torch.Tensor:
        return yb if yb.device == self.dev else yb.to(self.dev, non_blocking=True)

    def autocast(self):
        if self.amp is None:
            import contextlib

            return contextlib.nullcontext()
        return torch.autocast(device_type=self.dev.type, dtype=AMP_DTYPES[self.amp])


_CPU = _Placement(torch.device("cpu"), False, None)


def _eval_module(gm: torch.nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int,
                 place: _Placement = _CPU) -> tuple[float, float]:
    gm.eval()
    wrong, loss_sum = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(y), batch_size):
            xb = torch.from_numpy(np.array(x[i:i + batch_size], dtype=np.float32))
            yb = torch.from_numpy(np.array(y[i:i + batch_size], dtype=np.int64))
            if place is not _CPU:
                xb, yb = place.x(xb), place.y(yb)
            with place.autocast():
                out = main_output(gm(xb))  # auxiliary outputs are for training only
            out = out.float()
            loss_sum += float(F.cross_entropy(out, yb, reduction="sum"))
            wrong += int((out.argmax(1) != yb).sum())
    n = max(1, len(y))
    return wrong / n, loss_sum / n


def evaluate(graph: Graph, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> tuple[float, float]:
    """Classification error (in [0, 1]) and mean cross-entropy of ``graph`` on ``(x, y)``, in eval mode.

    Raises:
        ValueError: ``x``/``y`` do not fit the graph (shape, count), or ``y`` is empty.
        archir.IRError: the graph does not lower (e.g. a supernet).

    Example:
        >>> err, loss = evaluate(g, ds.x_test, ds.y_test)      # doctest: +SKIP
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if len(y) == 0 or x.ndim != 4 or len(x) != len(y) or y.ndim != 1:
        raise ValueError(f"evaluate needs x (N, C, H, W) and y (N,) with N > 0, got {x.shape} and {y.shape}")
    _check_input(graph, x.shape[1:])
    return _eval_module(to_fx(graph, training_ops=False), x, y, batch_size)  # the main output only


def _check_input(graph: Graph, shape: tuple) -> None:
    if len(graph.inputs) != 1:
        raise ValueError(f"graph {graph.name!r} has {len(graph.inputs)} inputs; training needs exactly one")
    want = tuple(graph.node(graph.inputs[0]).type.shape)
    if want != tuple(shape):
        raise ValueError(f"graph input {graph.inputs[0]!r} takes {want} but the data is {tuple(shape)}")


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


class _Batches(torch.utils.data.Dataset):
    """``ds[idx]`` = the images and labels at the index tensor ``idx`` (one item is one batch)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, idx):
        return self.x[idx], self.y[idx]


def _pad_value(dataset: Any, channels: int) -> tuple[float, ...] | None:
    """The standardised value of a black pixel, ``-mean / std`` per channel (None when unknown)."""
    mean, std = getattr(dataset, "mean", None), getattr(dataset, "std", None)
    try:
        if mean is not None and std is not None and len(mean) == len(std) == channels:
            return tuple(-float(m) / float(s) for m, s in zip(mean, std))
    except TypeError:
        pass
    return None


def _rng_state_json(state: tuple) -> list:
    return [state[0], list(state[1]), state[2]]


def cuda_flags(dev: torch.device, deterministic: bool) -> Callable[[], None]:
    """Set cuDNN/cuBLAS flags for a run on ``dev`` (``deterministic``: cuDNN's deterministic mode, no
    benchmarking, ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` when unset; else cuDNN benchmarks); returns a function
    that puts them back. Nothing to set on the CPU. Shared by ``train`` and the one-shot drivers.

    Example:
        >>> restore = cuda_flags(torch.device("cpu"), True)
        >>> restore()
    """
    if dev.type != "cuda":
        return lambda: None
    cudnn = torch.backends.cudnn
    prev = (cudnn.deterministic, cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    cudnn.deterministic = bool(deterministic)
    cudnn.benchmark = not deterministic
    if deterministic and prev[2] is None:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"

    def restore() -> None:
        cudnn.deterministic, cudnn.benchmark = prev[0], prev[1]
        if prev[2] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)

    return restore


def train(graph: Graph, dataset: Any, cfg: TrainConfig | None = None, *,
          on_epoch: Callable[[EpochInfo], None] | None = None,
          on_step: Callable[[int, int, int, dict], None] | None = None,
          resume: TrainState | None = None) -> TrainResult:
    """Train ``graph`` on ``dataset`` (a :class:`search.data.Dataset`) under ``cfg``.

    Args:
        graph: a plain graph (no choice nodes) with one ``(C, H, W)`` input and a logits output
            (then any auxiliary logits outputs, and ``drop_path`` nodes: see the module docstring).
        dataset: anything with ``x_train, y_train, x_val, y_val, x_test, y_test`` (an empty
            validation split is skipped: the ``val_`` figures are NaN).
        cfg: the training config (default ``TrainConfig()``).
        on_epoch: called with an :class:`EpochInfo` after every finished epoch (its exceptions,
            ``KeyboardInterrupt`` included, propagate).
        on_step: ``on_step(epoch, step, steps, stats)`` about 50 times an epoch and at its end, with
            ``stats`` = ``loss``, ``acc`` (running means over the epoch), ``images``, ``seconds``;
            asking for it adds the accuracy count to every step. Its exceptions propagate.
        resume: continue from this :class:`TrainState` (of the same graph, data and config).

    Returns:
        A :class:`TrainResult`; ``status == "failed"`` with a one-line ``reason`` if the loss went
        NaN/Inf or anything raised (the exception is not propagated; ``KeyboardInterrupt`` is).

    Example:
        >>> res = train(g, ds, TrainConfig(epochs=2, schedule="sgdr"))   # doctest: +SKIP
        >>> res.metrics["val_error"], res.graph.weights_hash() != g.weights_hash()   # doctest: +SKIP
    """
    cfg = TrainConfig() if cfg is None else cfg
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    history: list[dict] = [] if resume is None else [dict(h) for h in resume.meta["history"]]
    epochs_run = 0 if resume is None else int(resume.epoch)
    phase = "lowering"
    clock = {"train_s": 0.0, "images": 0}
    restore_flags = lambda: None  # noqa: E731
    dev_name = "cpu"
    try:
        dev = resolve_device(cfg.device)
        dev_name = str(dev)
        if cfg.amp == "fp16" and dev.type != "cuda":
            raise DeviceError(f"amp='fp16' needs a CUDA device, and {cfg.device!r} is the CPU here",
                              hint="use amp='bf16' on the CPU (or --amp bf16)")
        torch.set_num_threads(cfg.threads)
        cuda = dev.type == "cuda"
        if not cuda or cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        restore_flags = cuda_flags(dev, cfg.deterministic)
        fork_devices = [dev.index if dev.index is not None else torch.cuda.current_device()] if cuda else []
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(cfg.seed)
            _check_input(graph, dataset.x_train.shape[1:])
            gm = to_fx(graph)
            auxiliary = dict(gm.meta["archir_auxiliary"])
            if cfg.auxiliary_weight is not None:
                auxiliary = {k: float(cfg.auxiliary_weight) for k in auxiliary}
            drop_modules = [m for m in gm.modules() if type(m).__name__ == "DropPath"]
            if cfg.drop_path is not None:
                for m in drop_modules:
                    m.p = float(cfg.drop_path)
            place = _CPU if dev.type == "cpu" and not cfg.channels_last and cfg.amp is None else \
                _Placement(dev, cfg.channels_last, cfg.amp)
            if place is not _CPU:
                gm.to(dev)
                if cfg.channels_last:
                    gm.to(memory_format=torch.channels_last)
            params = list(gm.parameters())
            opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
            scaler = torch.amp.GradScaler("cuda") if cfg.amp == "fp16" else None
            x_tr = torch.from_numpy(np.array(dataset.x_train, dtype=np.float32))
            y_tr = torch.from_numpy(np.array(dataset.y_train, dtype=np.int64))
            n = len(y_tr)
            if n == 0:
                raise ValueError("the training split is empty")
            loader = None
            if cfg.workers > 0 or (cuda and x_tr.numel() * 4 > RESIDENT_BYTES):
                loader = _Batches(x_tr, y_tr)
            elif cuda:
                x_tr, y_tr = x_tr.to(dev), y_tr.to(dev)  # resident: batches are indexed on the device
            steps = math.ceil(n / cfg.batch_size)
            rng = np.random.default_rng(cfg.seed)
            aug_gen = None
            augment = None
            if cfg.augment or cfg.cutout:
                from search.augment import Augment

                augment = Augment(crop_padding=cfg.crop_padding if cfg.augment else 0, flip=bool(cfg.augment),
                                  cutout=cfg.cutout, pad_value=_pad_value(dataset, int(x_tr.shape[1])))
                aug_gen = torch.Generator().manual_seed(
                    int(np.random.SeedSequence([int(cfg.seed), 1]).generate_state(1)[0]))
            model: torch.nn.Module = gm
            compiled = False
            if cfg.compile:
                try:
                    model = torch.compile(gm)
                    compiled = True
                except Exception as e:  # no compiler backend here
                    warnings.warn(f"torch.compile is not available ({_one_line(e)}); training eagerly",
                                  RuntimeWarning, stacklevel=2)
            start = 0
            if resume is not None:
                phase = "resume"
                start = _load_state(resume, gm, opt, scaler, rng, aug_gen, dev)
            track = on_step is not None or on_epoch is not None
            for epoch in range(start, cfg.epochs):
                phase = f"epoch {epoch + 1}"
                epochs_run = epoch + 1
                gm.train()
                set_drop_path(gm, epoch / cfg.epochs)  # DARTS' linear ramp (no drop_path nodes: nothing)
                order = torch.from_numpy(rng.permutation(n))
                total, count = 0.0, 0
                total_t = torch.zeros((), dtype=torch.float64, device=dev) if cuda else None
                correct = torch.zeros((), dtype=torch.int64, device=dev) if track else None
                main_sum = torch.zeros((), dtype=torch.float64, device=dev) if track else None
                aux_sum = {k: torch.zeros((), dtype=torch.float64, device=dev) for k in auxiliary} if track else {}
                every = max(1, steps // 50)
                te = time.perf_counter()
                if loader is not None:
                    batches = iter(torch.utils.data.DataLoader(
                        loader, batch_size=None, num_workers=cfg.workers, pin_memory=cuda,
                        sampler=[order[s * cfg.batch_size:(s + 1) * cfg.batch_size] for s in range(steps)]))
                elif cuda:
                    order = order.to(dev)
                for s in range(steps):
                    lr = learning_rate(cfg, epoch + s / steps)
                    for group in opt.param_groups:
                        group["lr"] = lr
                    if loader is not None:
                        xb, yb = next(batches)
                        nb = len(yb)
                    else:
                        idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
                        xb, yb = x_tr[idx], y_tr[idx]
                        nb = len(idx)
                    if place is not _CPU:
                        xb, yb = place.x(xb), place.y(yb)
                    if augment is not None:
                        xb = augment(xb, aug_gen)
                    with place.autocast():
                        try:
                            out = model(xb)
                        except Exception as e:
                            if not compiled:
                                raise
                            warnings.warn(f"torch.compile failed ({_one_line(e)}); training eagerly",
                                          RuntimeWarning, stacklevel=2)
                            model, compiled = gm, False
                            out = model(xb)
                        loss = training_loss(out, yb, auxiliary)
                    if not cuda and not torch.isfinite(loss):
                        return _failed(f"loss became {float(loss.detach())} in epoch {epoch + 1}, step {s + 1} "
                                       f"(lr {lr:.3g})", epochs_run, t0, history, clock, dev_name)
                    opt.zero_grad(set_to_none=True)
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        if cfg.grad_clip is not None:
                            scaler.unscale_(opt)
                            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                        scaler.step(opt)
                        scaler.update()
                    else:
                        loss.backward()
                        if cfg.grad_clip is not None:
                            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                        opt.step()
                    if cuda:
                        total_t += loss.detach().double() * nb
                    else:
                        total += float(loss.detach()) * nb
                    count += nb
                    if track:
                        with torch.no_grad():
                            main = main_output(out).detach().float()
                            correct += (main.argmax(1) == yb).sum()
                            main_sum += F.cross_entropy(main, yb).double() * nb
                            for k in auxiliary:
                                aux_sum[k] += F.cross_entropy(out[k].detach().float(), yb).double() * nb
                    if on_step is not None and ((s + 1) % every == 0 or s + 1 == steps):
                        run_loss = float(total_t) if cuda else total
                        _call(on_step, epoch + 1, s + 1, steps,
                              {"loss": run_loss / count, "acc": float(correct) / count, "images": count,
                               "seconds": time.perf_counter() - te})
                if cuda:
                    torch.cuda.synchronize(dev)
                    total = float(total_t)
                    if not math.isfinite(total):
                        return _failed(f"loss became {total / count} in epoch {epoch + 1} (lr {lr:.3g})", epochs_run,
                                       t0, history, clock, dev_name)
                epoch_s = time.perf_counter() - te
                clock["train_s"] += epoch_s
                clock["images"] += count
                if len(dataset.y_val):
                    val_err, val_loss = _eval_module(gm, dataset.x_val, dataset.y_val, cfg.eval_batch_size, place)
                else:
                    val_err, val_loss = float("nan"), float("nan")
                history.append({"epoch": epoch + 1, "train_loss": total / count, "val_error": val_err,
                                "val_loss": val_loss, "lr": learning_rate(cfg, epoch + 1)})
                if len(dataset.y_val) and not math.isfinite(val_loss):
                    return _failed(f"validation loss became {val_loss} after epoch {epoch + 1}", epochs_run, t0,
                                   history, clock, dev_name)
                if on_epoch is not None:
                    stats = {"train_acc": float(correct) / count, "main_loss": float(main_sum) / count,
                             "aux_loss": {str(k): float(v) / count for k, v in aux_sum.items()},
                             "aux_weight": {str(k): float(w) for k, w in auxiliary.items()},
                             "drop_path": [m.rate for m in drop_modules], "images": count, "seconds": epoch_s,
                             "images_per_s": count / epoch_s if epoch_s > 0 else float("inf")}
                    e_done = epoch + 1

                    def state(e_done=e_done) -> TrainState:
                        return _save_state(e_done, gm, opt, scaler, rng, aug_gen, dev, history, cfg)

                    _call(on_epoch, EpochInfo(epoch + 1, cfg.epochs, dict(history[-1]), stats, state))
            phase = "sync_back"
            if place is not _CPU:
                gm.to("cpu")
                if cfg.channels_last:
                    gm.to(memory_format=torch.contiguous_format)
            trained = sync_back(graph, gm)
            phase = "evaluation"
            if place is not _CPU:
                gm.to(dev)
                if cfg.channels_last:
                    gm.to(memory_format=torch.channels_last)
            test_err, test_loss = _eval_module(gm, dataset.x_test, dataset.y_test, cfg.eval_batch_size, place)
            if not history:
                raise ValueError(f"nothing to train: the run already has {epochs_run} of {cfg.epochs} epochs")
            last = history[-1]
            val_err, val_loss = last["val_error"], last["val_loss"]
            metrics = {"train_loss": float(last["train_loss"]), "val_error": float(val_err),
                       "val_acc": 1.0 - float(val_err), "val_loss": float(val_loss), "test_error": float(test_err),
                       "test_acc": 1.0 - float(test_err), "test_loss": float(test_loss)}
        return TrainResult("ok", None, metrics, trained, epochs_run, time.perf_counter() - t0, history,
                           train_seconds=clock["train_s"], train_images=clock["images"], device=dev_name)
    except _Propagate as e:
        raise e.original from None
    except Exception as e:  # a bad candidate must not stop the search (a bug keeps its traceback)
        res = _failed(f"{phase}: {_one_line(e)}", epochs_run, t0, history, clock, dev_name)
        res.traceback = None if is_user_error(e) else _traceback.format_exc()
        return res
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det, warn_only=det_warn)
        restore_flags()


def _call(fn: Callable, *args) -> None:
    try:
        fn(*args)
    except BaseException as e:  # the caller's: propagate it as it is
        raise _Propagate(e) from e


def _save_state(epoch: int, gm: torch.nn.Module, opt: torch.optim.Optimizer, scaler, rng: np.random.Generator,
                aug_gen: torch.Generator | None, dev: torch.device, history: list[dict], cfg: TrainConfig
                ) -> TrainState:
    tensors: dict[str, torch.Tensor] = {}
    for k, v in gm.state_dict().items():
        tensors[f"model.{k}"] = v.detach().to("cpu").contiguous().clone()
    sd = opt.state_dict()
    for i, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt.{i}.{k}"] = v.detach().to("cpu").contiguous().clone()
    tensors["rng.torch"] = torch.get_rng_state().clone()
    if dev.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(dev).clone()
    if aug_gen is not None:
        tensors["rng.augment"] = aug_gen.get_state().clone()
    meta = {"epoch": epoch, "history": [dict(h) for h in history], "numpy_rng": rng.bit_generator.state,
            "python_rng": _rng_state_json(random.getstate()), "optimizer": sd["param_groups"],
            "scaler": None if scaler is None else scaler.state_dict(), "config": cfg.to_dict()}
    return TrainState(epoch, tensors, meta)


def _load_state(state: TrainState, gm: torch.nn.Module, opt: torch.optim.Optimizer, scaler,
                rng: np.random.Generator, aug_gen: torch.Generator | None, dev: torch.device) -> int:
    t = state.tensors
    model = {k[len("model."):]: v for k, v in t.items() if k.startswith("model.")}
    gm.load_state_dict(model, strict=True)
    opt_state: dict[int, dict] = {}
    for k, v in t.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            opt_state.setdefault(int(i), {})[name] = v.to(dev)
    opt.load_state_dict({"state": opt_state, "param_groups": state.meta["optimizer"]})
    if scaler is not None and state.meta.get("scaler"):
        scaler.load_state_dict(state.meta["scaler"])
    torch.set_rng_state(t["rng.torch"])
    if dev.type == "cuda" and "rng.cuda" in t:
        torch.cuda.set_rng_state(t["rng.cuda"], dev)
    if aug_gen is not None and "rng.augment" in t:
        aug_gen.set_state(t["rng.augment"])
    rng.bit_generator.state = state.meta["numpy_rng"]
    py = state.meta["python_rng"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    return int(state.epoch)


def _failed(reason: str, epochs: int, t0: float, history: list[dict], clock: dict | None = None,
            device: str = "cpu") -> TrainResult:
    clock = clock or {"train_s": 0.0, "images": 0}
    return TrainResult("failed", reason.replace("\n", " "), {}, None, epochs, time.perf_counter() - t0, history,
                       train_seconds=clock["train_s"], train_images=clock["images"], device=device)
