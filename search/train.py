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
import time
import traceback as _traceback
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from archir import Graph
from archir.errors import is_user_error
from archir.lower import set_drop_path, sync_back, to_fx

__all__ = ["TrainConfig", "TrainResult", "train", "evaluate", "learning_rate", "training_loss", "main_output"]

SCHEDULES = ("cosine", "sgdr", "constant")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train one candidate (checked on construction; ``ValueError`` names the bad field).

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

    def __post_init__(self) -> None:
        def need(ok: bool, field: str, what: str) -> None:
            if not ok:
                raise ValueError(f"TrainConfig.{field} = {getattr(self, field)!r}: {what}")

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

    def to_dict(self) -> dict:
        """The config as a JSON-able dict (for the experiment store)."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class TrainResult:
    """What training one candidate gave.

    Attributes:
        status: ``"ok"`` or ``"failed"``.
        reason: ``None``, or one line saying why it failed.
        metrics: ``train_loss``, ``val_error``, ``val_acc``, ``val_loss``, ``test_error``, ``test_acc``,
            ``test_loss`` (floats; errors and accuracies in [0, 1]); empty if failed.
        graph: the graph with trained weights (``None`` if failed).
        epochs: epochs begun (the compute spent, in candidate-epochs).
        seconds: wall time of the whole call.
        history: per finished epoch: ``{"epoch", "train_loss", "val_error", "val_loss", "lr"}`` (``lr`` at
            the epoch's end).
        traceback: when it failed from an exception that is an archir bug (not an
            ``archir.ArchirError`` user error), that exception's traceback; else None.
    """

    status: str
    reason: str | None
    metrics: dict[str, float]
    graph: Graph | None
    epochs: int
    seconds: float
    history: list[dict] = dataclasses.field(default_factory=list)
    traceback: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


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


def _eval_module(gm: torch.nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int) -> tuple[float, float]:
    gm.eval()
    wrong, loss_sum = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(y), batch_size):
            xb = torch.from_numpy(np.array(x[i:i + batch_size], dtype=np.float32))
            yb = torch.from_numpy(np.array(y[i:i + batch_size], dtype=np.int64))
            out = main_output(gm(xb))  # auxiliary outputs are for training only
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


def train(graph: Graph, dataset: Any, cfg: TrainConfig | None = None) -> TrainResult:
    """Train ``graph`` on ``dataset`` (a :class:`search.data.Dataset`) under ``cfg``.

    Args:
        graph: a plain graph (no choice nodes) with one ``(C, H, W)`` input and a logits output
            (then any auxiliary logits outputs, and ``drop_path`` nodes: see the module docstring).
        dataset: anything with ``x_train, y_train, x_val, y_val, x_test, y_test``.
        cfg: the training config (default ``TrainConfig()``).

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
    history: list[dict] = []
    epochs_run = 0
    phase = "lowering"
    try:
        torch.set_num_threads(cfg.threads)
        torch.use_deterministic_algorithms(True, warn_only=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            _check_input(graph, dataset.x_train.shape[1:])
            gm = to_fx(graph)
            auxiliary = gm.meta["archir_auxiliary"]
            params = list(gm.parameters())
            opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
            x_tr = torch.from_numpy(np.array(dataset.x_train, dtype=np.float32))
            y_tr = torch.from_numpy(np.array(dataset.y_train, dtype=np.int64))
            n = len(y_tr)
            if n == 0:
                raise ValueError("the training split is empty")
            steps = math.ceil(n / cfg.batch_size)
            rng = np.random.default_rng(cfg.seed)
            for epoch in range(cfg.epochs):
                phase = f"epoch {epoch + 1}"
                epochs_run = epoch + 1
                gm.train()
                set_drop_path(gm, epoch / cfg.epochs)  # DARTS' linear ramp (no drop_path nodes: nothing)
                order = torch.from_numpy(rng.permutation(n))
                total, count = 0.0, 0
                for s in range(steps):
                    lr = learning_rate(cfg, epoch + s / steps)
                    for group in opt.param_groups:
                        group["lr"] = lr
                    idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
                    loss = training_loss(gm(x_tr[idx]), y_tr[idx], auxiliary)
                    if not torch.isfinite(loss):
                        return _failed(f"loss became {float(loss.detach())} in epoch {epoch + 1}, step {s + 1} "
                                       f"(lr {lr:.3g})", epochs_run, t0, history)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                    opt.step()
                    total += float(loss.detach()) * len(idx)
                    count += len(idx)
                val_err, val_loss = _eval_module(gm, dataset.x_val, dataset.y_val, cfg.eval_batch_size)
                history.append({"epoch": epoch + 1, "train_loss": total / count, "val_error": val_err,
                                "val_loss": val_loss, "lr": learning_rate(cfg, epoch + 1)})
                if not math.isfinite(val_loss):
                    return _failed(f"validation loss became {val_loss} after epoch {epoch + 1}", epochs_run, t0,
                                   history)
            phase = "sync_back"
            trained = sync_back(graph, gm)
            phase = "evaluation"
            test_err, test_loss = _eval_module(gm, dataset.x_test, dataset.y_test, cfg.eval_batch_size)
            last = history[-1]
            val_err, val_loss = last["val_error"], last["val_loss"]
            metrics = {"train_loss": float(last["train_loss"]), "val_error": float(val_err),
                       "val_acc": 1.0 - float(val_err), "val_loss": float(val_loss), "test_error": float(test_err),
                       "test_acc": 1.0 - float(test_err), "test_loss": float(test_loss)}
        return TrainResult("ok", None, metrics, trained, epochs_run, time.perf_counter() - t0, history)
    except Exception as e:  # a bad candidate must not stop the search (a bug keeps its traceback)
        res = _failed(f"{phase}: {_one_line(e)}", epochs_run, t0, history)
        res.traceback = None if is_user_error(e) else _traceback.format_exc()
        return res
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det, warn_only=det_warn)


def _failed(reason: str, epochs: int, t0: float, history: list[dict]) -> TrainResult:
    return TrainResult("failed", reason.replace("\n", " "), {}, None, epochs, time.perf_counter() - t0, history)
