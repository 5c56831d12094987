"""``archir train``: train one network to the end with an evaluation recipe, checkpointed, resumable.

Usage::

    archir build --genotype DARTS_V2 --auxiliary --drop-path 0.2 -o darts_v2.json
    archir train darts_v2.json --dataset cifar10:data --epochs 600 --recipe darts -o runs/final
    archir train darts_v2.json --dataset cifar10:data --epochs 600 --recipe darts -o runs/final --resume
    archir train runs/search --best --dataset digits --epochs 20 --recipe plain -o runs/best   # a search's best
    archir build --run runs/darts --best --cells 20 --channels 36 --auxiliary --drop-path 0.2 -o big.json
    archir train big.json --dataset cifar10:data --epochs 600 --recipe darts -o runs/transfer  # NASNet transfer

The ``darts`` recipe (``search.train.RECIPES``) is the DARTS/PNAS evaluation recipe: SGD 0.025 momentum
0.9 weight decay 3e-4, cosine to 0, batch 96, random crop 4 + flip, cutout 16, every ``drop_path``
node at 0.2 ramped linearly from 0, every auxiliary output weighted 0.4, gradients clipped at 5.
``plain`` is ``search.train.TrainConfig``'s defaults. ``--batch-size``/``--lr`` override either.

``OUT`` gets, after every epoch, a line of ``train_log.jsonl`` (the epoch's loss, its main and
auxiliary cross-entropies and their weights, the drop-path rate of every node, accuracy, images/s,
validation figures) and a checkpoint (``checkpoint.json`` + ``checkpoint-EEEE.safetensors``: the
weights, the optimizer's momenta and every RNG state; the JSON is renamed into place last, so a kill
at any moment leaves the previous checkpoint whole). ``--resume`` continues from it; on the CPU the
final weights are bit-identical to an uninterrupted run. At the end: ``net.json`` (the trained graph,
auxiliary head and drop-path kept), ``net.onnx`` (the inference network, verified under ONNX Runtime),
``result.json`` (the metrics) and the final test accuracy.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from archir.cli.main import CLIError, Subcommand, run_candidate

__all__ = ["SUBCOMMANDS", "CHECKPOINT", "LOG"]

CHECKPOINT = "checkpoint.json"
LOG = "train_log.jsonl"
#: options that must match for --resume (the rest, e.g. --device or --workers, may change)
_SAME = ("recipe", "epochs", "dataset", "val_fraction", "seed", "batch_size", "lr", "amp", "channels_last")


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("graph", help="the network's .json file (weights beside it), or a search run folder with "
                                 "--best / --id N")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--best", action="store_true", help="run folder: train the best candidate")
    which.add_argument("--id", type=int, default=None, metavar="N", help="run folder: train candidate N")
    p.add_argument("--dataset", default="digits",
                   help="digits (default), cifar10:DIR / cifar100:DIR (the binary batches), a .npz or an image "
                        "folder")
    p.add_argument("--epochs", type=int, required=True, help="epochs to train (DARTS: 600)")
    p.add_argument("--recipe", choices=["darts", "plain"], default="darts", help="training recipe (default darts)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present; default), cpu, cuda, cuda:N")
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="mixed precision (fp16 needs CUDA)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (eager fallback)")
    p.add_argument("--deterministic", action="store_true", help="CUDA: deterministic cuDNN/cuBLAS")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument("--batch-size", type=int, default=None, help="override the recipe's batch size")
    p.add_argument("--lr", type=float, default=None, help="override the recipe's learning rate")
    p.add_argument("--val-fraction", type=float, default=0.0,
                   help="cifar: fraction of the training set held out for validation (default 0: train on all)")
    p.add_argument("--seed", type=int, default=0, help="seed of data order, augmentation and dropout (default 0)")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder (checkpoints, log, net.onnx)")
    p.add_argument("--resume", action="store_true", help="continue from DIR's checkpoint (same options)")
    p.add_argument("--no-export", action="store_true", help="do not write net.onnx")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _finite(v):
    """JSON-friendly: NaN/Inf become null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


def _load_graph(args: argparse.Namespace):
    import archir

    if Path(args.graph).is_dir():
        g, c = run_candidate(args, "train")
        return g, f"{args.graph}#{c.id}"
    if args.best or args.id is not None:
        raise CLIError(f"{args.graph}: --best/--id pick a candidate of a search run folder, and this is not a folder",
                       hint="give the --out folder of 'archir search', or drop --best/--id for a graph file")
    return archir.load(args.graph), str(args.graph)


def _options(args: argparse.Namespace, source: str, graph_hash: str) -> dict:
    return {"graph": source, "graph_hash": graph_hash, "recipe": args.recipe, "epochs": args.epochs,
            "dataset": args.dataset, "val_fraction": args.val_fraction, "seed": args.seed,
            "batch_size": args.batch_size, "lr": args.lr, "amp": args.amp, "channels_last": args.channels_last}


def _read_checkpoint(out: Path, options: dict):
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from search.train import TrainState

    path = out / CHECKPOINT
    if not path.is_file():
        raise CLIError(f"{out}: no checkpoint to resume from ({CHECKPOINT} is missing)", file=str(path),
                       hint="drop --resume to start the training (or give the -o folder of the run to continue)")
    try:
        doc = json.loads(path.read_text())
        weights = out / doc["weights"]
        epoch = int(doc["epoch"])
        meta, saved = doc["meta"], doc["options"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CLIError(f"the checkpoint cannot be read ({type(e).__name__}: {e})", file=str(path),
                       hint="start again without --resume into a new -o folder") from None
    diff = [k for k in ("graph_hash", *_SAME) if saved.get(k) != options.get(k)]
    if diff:
        k = diff[0]
        raise CLIError(f"--resume with other options than the checkpoint's: {k} was {saved.get(k)!r}, now "
                       f"{options.get(k)!r}" + (f" (and {diff[1:]})" if len(diff) > 1 else ""), file=str(path),
                       hint="resume with the same network and options, or train into a new -o folder")
    try:
        tensors = load_file(str(weights))
    except (OSError, SafetensorError) as e:
        raise CLIError(f"the checkpoint's weights cannot be read ({e})", file=str(weights),
                       hint="start again without --resume into a new -o folder") from None
    if tensors.get("rng.torch") is None or tensors["rng.torch"].dtype != torch.uint8:
        raise CLIError("the checkpoint's weights hold no RNG state", file=str(weights),
                       hint="start again without --resume into a new -o folder")
    return TrainState(epoch, tensors, meta)


def _write_checkpoint(out: Path, state, options: dict) -> None:
    from safetensors.torch import save

    from archir.serialize import atomic_write

    name = f"checkpoint-{state.epoch:04d}.safetensors"
    atomic_write(out / name, save(state.tensors))
    doc = {"epoch": state.epoch, "weights": name, "options": options, "meta": state.meta}
    atomic_write(out / CHECKPOINT, json.dumps(doc).encode())  # the commit point: the new pair is complete
    for old in out.glob("checkpoint-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


class _Bar:
    """A progress bar per epoch: rich's on a terminal; on anything else (a log file, CI) one plain
    line per epoch, since a live bar there prints nothing useful (rich draws nothing off a terminal)."""

    def __init__(self, quiet: bool, file=None) -> None:
        self.quiet = quiet
        self.file = file
        self.rich = None
        self.task = None
        self._epoch = None
        self._last = 0.0
        if quiet or not self._tty():
            return
        try:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        except ImportError:  # rich is a dependency; a stripped install still gets the plain line
            return
        self.rich = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.3f}  "
                                        "{task.fields[ips]:,.0f} img/s"), TimeRemainingColumn(),
                             console=Console(file=self._out(), force_terminal=True))
        self.rich.start()

    def _out(self):
        return self.file if self.file is not None else sys.stderr

    def _tty(self) -> bool:
        isatty = getattr(self._out(), "isatty", None)
        return bool(isatty and isatty())

    def step(self, epoch: int, step: int, steps: int, stats: dict) -> None:
        if self.quiet:
            return
        ips = stats["images"] / stats["seconds"] if stats["seconds"] > 0 else 0.0
        if self.rich is not None:
            if self.task is None or self._epoch != epoch:  # a new bar per epoch; the finished ones stay
                self.task, self._epoch = self.rich.add_task("", total=steps, epoch=epoch, loss=0.0, acc=0.0,
                                                            ips=0.0), epoch
            self.rich.update(self.task, completed=step, epoch=epoch, loss=stats["loss"], acc=stats["acc"], ips=ips)
            return
        now = time.perf_counter()
        tty = self._tty()
        if step == steps or (tty and now - self._last > 1.0):
            self._last = now
            eta = stats["seconds"] / step * (steps - step)
            print(f"epoch {epoch} {step}/{steps}  loss {stats['loss']:.4f}  acc {stats['acc']:.3f}  "
                  f"{ips:,.0f} img/s  eta {eta:.0f}s", end="\r" if tty and step < steps else "\n",
                  file=self._out(), flush=True)

    def close(self) -> None:
        if self.rich is not None:
            self.rich.stop()


def _run_train(args: argparse.Namespace) -> int:
    import archir
    from search.data import load_dataset
    from search.train import resolve_device, recipe_config, train

    if args.epochs < 1:
        raise CLIError(f"--epochs must be >= 1, got {args.epochs}", hint="e.g. --epochs 600 (DARTS)")
    if args.workers < 0:
        raise CLIError(f"--workers must be >= 0, got {args.workers}", hint="e.g. --workers 4 (0: in process)")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"{out}: is a file, not a folder", hint="give a folder for -o (it is created)")
    if not args.resume and (out / CHECKPOINT).exists():
        raise CLIError(f"{out}: holds the checkpoint of a training already", file=str(out / CHECKPOINT),
                       hint="pass --resume to continue it, or give another -o folder")
    g, source = _load_graph(args)
    over = {k: getattr(args, k) for k in ("batch_size", "lr") if getattr(args, k) is not None}
    cfg = recipe_config(args.recipe, epochs=args.epochs, seed=args.seed, device=args.device, amp=args.amp,
                        channels_last=args.channels_last, compile=args.compile, deterministic=args.deterministic,
                        workers=args.workers, **over)
    dev = resolve_device(cfg.device)
    if cfg.amp == "fp16" and dev.type != "cuda":
        raise CLIError(f"--amp fp16 needs a CUDA device; --device {args.device} is the CPU here",
                       hint="use --amp bf16 on the CPU, or --device cuda on a GPU machine")
    ds = load_dataset(args.dataset, seed=args.seed, val_fraction=args.val_fraction)
    options = _options(args, source, g.structural_hash() + ":" + g.weights_hash())
    resume = _read_checkpoint(out, options) if args.resume else None
    out.mkdir(parents=True, exist_ok=True)

    from archir.training import auxiliary_outputs

    aux = auxiliary_outputs(g)
    n_drop = len(g.nodes("drop_path"))
    print(f"archir train: {source} ({g.num_params():,} params) on {ds.name} ({len(ds.y_train)} train / "
          f"{len(ds.y_val)} val / {len(ds.y_test)} test), recipe {args.recipe}, {args.epochs} epochs, device {dev}"
          + (f", amp {cfg.amp}" if cfg.amp else "") + (", channels_last" if cfg.channels_last else ""))
    if args.recipe == "darts" and not aux:
        print("  note: the network has no auxiliary head, so the recipe's auxiliary weight 0.4 has nothing to weigh "
              "(archir build --auxiliary adds one)")
    if args.recipe == "darts" and not n_drop:
        print("  note: the network has no drop_path nodes, so the recipe's drop-path 0.2 has nothing to drop "
              "(archir build --drop-path 0.2 adds them)")
    if resume is not None:
        print(f"  resuming after epoch {resume.epoch} of {args.epochs} from {out / CHECKPOINT}")
        if resume.epoch >= args.epochs:
            raise CLIError(f"{out}: the checkpoint has all {args.epochs} epochs already", file=str(out / CHECKPOINT),
                           hint="nothing to resume: the trained network is net.json there (or train more with a new "
                                "-o folder)")

    log_path = out / LOG
    kept = []
    if resume is not None and log_path.exists():  # a kill after a log line but before its checkpoint
        kept = [ln for ln in log_path.read_text().splitlines() if ln.strip()
                and json.loads(ln).get("epoch", 0) <= resume.epoch]
    log_path.write_text("".join(ln + "\n" for ln in kept))
    bar = _Bar(args.quiet)

    def on_epoch(info) -> None:
        rec = {**info.record, **info.stats, "epochs": info.epochs, "device": str(dev)}
        with open(log_path, "a") as f:
            f.write(json.dumps(_finite(rec)) + "\n")
        _write_checkpoint(out, info.state(), options)
        val = "" if math.isnan(info.record["val_error"]) else f", val error {info.record['val_error']:.4f}"
        print(f"epoch {info.epoch}/{info.epochs}: loss {info.record['train_loss']:.4f}, train acc "
              f"{info.stats['train_acc']:.4f}{val}, lr {info.record['lr']:.4g}, {info.stats['images_per_s']:,.0f} img/s",
              flush=True)

    try:
        res = train(g, ds, cfg, on_epoch=on_epoch, on_step=bar.step, resume=resume)
    except KeyboardInterrupt:
        bar.close()
        print(f"training interrupted: the last finished epoch is checkpointed in {out}; continue it with the same "
              "command and --resume", file=sys.stderr)
        raise
    finally:
        bar.close()
    if not res.ok:
        if res.traceback:
            print(res.traceback, file=sys.stderr)
            raise RuntimeError(f"training failed from an archir bug: {res.reason}")
        raise CLIError(f"training failed: {res.reason}", file=str(out),
                       hint="lower --lr (a NaN/Inf loss), or check the network and data; resume from the last "
                            "checkpoint with --resume")
    path = archir.save(res.graph, out / "net.json")
    m = res.metrics
    result = {"metrics": m, "device": res.device, "epochs": res.epochs, "seconds": res.seconds,
              "train_images_per_s": res.train_images / res.train_seconds if res.train_seconds else None,
              "config": cfg.to_dict(), "options": options}
    from archir.serialize import atomic_write

    atomic_write(out / "result.json", json.dumps(_finite(result), indent=1).encode())
    print(f"final test accuracy {m['test_acc']:.4f} (error {m['test_error']:.4f}, loss {m['test_loss']:.4f}) on "
          f"{len(ds.y_test)} test images")
    print(f"wrote {path} (the trained network, auxiliary head and drop-path kept), {out / 'result.json'}, {log_path}")
    if not args.no_export:
        from archir.cli.main import export_verified

        rep = export_verified(res.graph, out / "net.onnx")
        print(f"wrote {rep.path} ({rep.bytes:,} bytes, the inference network; verified with ONNX Runtime "
              f"{rep.ort_version}: max |fx - ort| = {rep.max_abs_err:.3g})")
    return 0


SUBCOMMANDS = [
    Subcommand("train", "train one network to the end (DARTS recipe or plain), checkpointed each epoch, resumable",
               _add_train, _run_train,
               "Train a network (NET.json, or a search run's --best / --id N candidate) with the DARTS evaluation "
               "recipe (SGD 0.025, cosine, batch 96, cutout 16, drop-path 0.2 ramped, auxiliary weight 0.4, clip 5) "
               "or the plain one, on CPU or CUDA; a checkpoint and a JSON-lines log line each epoch, --resume after "
               "a kill, the final test accuracy and the verified ONNX export of the inference network."),
]
