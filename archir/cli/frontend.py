"""``archir import``: bring a PyTorch model or an ONNX file into archir (``net.json`` + weights).

Usage::

    archir import model.py:make_model -o net.json --input-shape 3,224,224
    archir import model.onnx -o net.json
    archir import model_dynamic_hw.onnx -o net.json --input-shape 3,224,224

For ``FILE.py:FUNCTION`` the Python file is executed and ``FUNCTION()`` is called with no
arguments to build the ``nn.Module`` (running the user's own file is what they asked for;
nothing is unpickled). The module is imported with :func:`archir.frontend.from_torch` on a
seeded random input of ``--input-shape`` (batch 1) and checked against the module. An
``.onnx`` file is imported with :func:`archir.frontend.from_onnx` (both of torch's exporters);
``--input-shape`` there sizes the dims after the batch that the file leaves dynamic. Unsupported layers are all
listed in one error line.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
import time
import uuid
from pathlib import Path

from archir.cli.main import CLIError, Subcommand, _check_out_path, _fmt_s

__all__ = ["SUBCOMMANDS", "load_factory", "parse_shape"]


def parse_shape(text: str) -> tuple[int, ...]:
    """``"3,224,224"`` (or ``"3x224x224"``) -> ``(3, 224, 224)``: the per-sample shape, batch excluded."""
    try:
        dims = tuple(int(p) for p in re.split(r"[,x]", text.strip()))  # "3,224,224" or "3x224x224"
    except ValueError:
        dims = ()
    if not dims or any(d < 1 for d in dims):
        raise CLIError(f"--input-shape {text!r} is not a list of positive ints",
                       hint="give the shape of one sample without the batch, e.g. --input-shape 3,224,224")
    return dims


def load_factory(spec: str):
    """Run ``FILE.py`` and return its callable ``FUNCTION`` for ``spec = "FILE.py:FUNCTION"``."""
    path_s, sep, func = spec.rpartition(":")
    if not sep or not path_s or not func:
        raise CLIError(f"{spec!r} is not FILE.py:FUNCTION or an .onnx file",
                       hint="e.g. archir import model.py:make_model -o net.json --input-shape 3,224,224")
    path = Path(path_s)
    if not path.is_file():
        raise CLIError(f"{path}: no such file", hint="check the path of the Python file that builds the model")
    name = f"_archir_user_model_{uuid.uuid4().hex[:8]}"
    spec_obj = importlib.util.spec_from_file_location(name, path)
    if spec_obj is None or spec_obj.loader is None:
        raise CLIError(f"{path}: cannot be loaded as a Python module", hint="give a .py file")
    mod = importlib.util.module_from_spec(spec_obj)
    sys.modules[name] = mod  # dataclasses and pickling-free helpers in the file look themselves up here
    try:
        spec_obj.loader.exec_module(mod)
    except SystemExit as e:
        raise CLIError(f"{path}: the file called exit({e.code}) while loading", hint="guard script code with "
                       "if __name__ == '__main__':") from None
    except Exception as e:  # noqa: BLE001 - the user's file failed; say where
        raise CLIError(f"{path}: running the file failed: {type(e).__name__}: {e}",
                       hint="fix the error in the file (run it with python to see the traceback)") from None
    finally:
        sys.modules.pop(name, None)
    fn = getattr(mod, func, None)
    if not callable(fn):
        found = sorted(k for k, v in vars(mod).items() if callable(v) and not k.startswith("_")
                       and getattr(v, "__module__", None) == name)
        raise CLIError(f"{path}: no function {func!r}",
                       hint=f"functions defined there: {', '.join(found) or '(none)'}; write FILE.py:FUNCTION")
    return fn


def _add_import(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="FILE.py:FUNCTION (FUNCTION() returns an nn.Module) or an .onnx file")
    p.add_argument("-o", "--output", required=True, metavar="OUT.json",
                   help="the graph file to write (its weights go to OUT.safetensors)")
    p.add_argument("--input-shape", action="append", metavar="C,H,W",
                   help="shape of one input sample without the batch, e.g. 3,224,224 (repeat for several inputs; "
                        "needed for a Python model; for an ONNX file it sizes dims exported as dynamic)")
    p.add_argument("--name", default=None, help="the graph name (default: the model's class or ONNX graph name)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random example input (default: 0)")
    p.add_argument("--no-check", action="store_true",
                   help="skip comparing the imported graph with the module on the example input")


def _run_import(args: argparse.Namespace) -> int:
    import archir

    out = Path(args.output)
    if out.suffix.lower() != ".json":
        raise CLIError(f"{out}: the graph file must end in .json", hint=f"use -o {out.with_suffix('.json')}")
    _check_out_path(out, "graph", "net.json")
    t0 = time.perf_counter()
    if args.model.lower().endswith(".onnx"):
        from archir.frontend import from_onnx

        if not Path(args.model).is_file():
            raise CLIError(f"{args.model}: no such file", hint="check the path of the .onnx file")
        # --input-shape fixes the sizes of dynamic dims after the batch (an export with a dynamic H, W)
        shapes = [parse_shape(s) for s in args.input_shape] if args.input_shape else None
        g = from_onnx(args.model, name=args.name, input_shapes=shapes)
        how = "ONNX"
    else:
        if not args.input_shape:
            raise CLIError("a Python model needs --input-shape (the shape of one input sample, batch excluded)",
                           hint="e.g. --input-shape 3,224,224")
        shapes = [parse_shape(s) for s in args.input_shape]
        fn = load_factory(args.model)
        import torch
        from torch import nn

        from archir.frontend import from_torch

        try:
            module = fn()
        except Exception as e:  # noqa: BLE001 - the user's factory failed
            raise CLIError(f"{args.model}: calling the function failed: {type(e).__name__}: {e}",
                           hint="the function must build the model with no arguments") from None
        if not isinstance(module, nn.Module):
            raise CLIError(f"{args.model}: returned a {type(module).__name__}, not a torch.nn.Module",
                           hint="return the model object from the function")
        gen = torch.Generator().manual_seed(args.seed)
        xs = tuple(torch.randn((1, *s), generator=gen) for s in shapes)
        g = from_torch(module, xs, name=args.name, check=not args.no_check)
        how = f"{g.meta['frontend']['tracer']}" + ("" if args.no_check else ", checked against the module")
    took = time.perf_counter() - t0
    archir.save(g, out)
    ops = sorted({n.op for n in g.nodes()})
    print(f"imported {g.name}: {len(g)} nodes, {g.num_params():,} params ({how}; {_fmt_s(took)})")
    print(f"ops: {', '.join(ops)}")
    for note in g.meta.get("frontend", {}).get("notes", [])[:3]:
        print(f"note: {note}")
    print(f"wrote {out} and {out.with_suffix('.safetensors')}")
    return 0


SUBCOMMANDS = [
    Subcommand("import", "import a PyTorch model (FILE.py:FUNCTION) or an ONNX file as an archir graph",
               _add_import, _run_import,
               "Import a network into archir. FILE.py:FUNCTION runs your Python file and calls FUNCTION() to "
               "build an nn.Module, which is traced (torch.fx, falling back to torch.export) on a random input "
               "of --input-shape and checked against the module; an .onnx file is loaded safely (no custom ops, "
               "external data only beside the model). Unsupported layers are listed all at once."),
]
