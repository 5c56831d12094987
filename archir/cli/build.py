"""``archir build``: a published (or your own) DARTS/NASNet genotype as an evaluation network.

Usage::

    archir build --genotype DARTS_V2 --cells 20 --channels 36 -o net.json            # DARTS' CIFAR-10 network
    archir build --genotype NASNet --stem imagenet --input 3x224x224 --classes 1000 \\
        --cells 14 --channels 48 -o nasnet_mobile.json                                # the ImageNet mobile network
    archir build --genotype my_cells.json --auxiliary --drop-path 0.2 -o train.json  # a Genotype as JSON
    archir build --run runs/darts --best --cells 20 --channels 36 -o net.json       # NASNet transfer of a search

``--run RUN --best`` (or ``--id N``) takes the cell of a search run's candidate (a run of the
``darts`` space, any strategy): its decisions become a genotype (printed as JSON, so it can be
kept and given back to ``--genotype``), stacked into the evaluation network. Train it with
``archir train net.json --recipe darts``.

The network is ``search.spaces.DartsSpace.for_genotype(...).build(...)``: counts exclude the
auxiliary head, as the papers count, and the command says so.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from archir.cli.main import CLIError, Subcommand

__all__ = ["SUBCOMMANDS"]


def _add_build(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--genotype", metavar="NAME|FILE",
                     help="a genotype of search.spaces.genotypes (DARTS_V2, NASNet, AmoebaNet, PNAS, ENAS, ...) or a "
                          'JSON file {"normal": [[op, input], ...], "normal_concat": [...], "reduce": ..., '
                          '"reduce_concat": ...}')
    src.add_argument("--run", dest="from_run", metavar="RUN", help="a search run folder of the darts space: the cell of its --best "
                                                  "(or --id N) candidate (NASNet transfer)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--best", action="store_true", help="--run: the best finished candidate")
    which.add_argument("--id", type=int, default=None, metavar="N", help="--run: candidate N")
    p.add_argument("--cells", type=int, default=20, help="cells of the network (default 20)")
    p.add_argument("--channels", type=int, default=36, help="channels of the first cells (default 36)")
    p.add_argument("--stem", choices=["cifar", "imagenet"], default="cifar",
                   help="cifar: one 3x3 conv (default); imagenet: DARTS' NetworkImageNet stems")
    p.add_argument("--input", default=None, metavar="CxHxW",
                   help="input shape (default 3x32x32; 3x224x224 with --stem imagenet)")
    p.add_argument("--classes", type=int, default=None, help="classes (default 10; 1000 with --stem imagenet)")
    p.add_argument("--auxiliary", nargs="?", type=float, const=0.4, default=0.0, metavar="WEIGHT",
                   help="add the auxiliary head (loss weight, default 0.4)")
    p.add_argument("--drop-path", type=float, default=0.0, metavar="P", help="drop-path rate on non-identity edges")
    p.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default 0)")
    p.add_argument("-o", "--out", required=True, metavar="NET.json", help="where to write the graph")


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise CLIError(f"--input {text!r} is not CxHxW", hint="e.g. --input 3x32x32")
    return shape


def load_genotype(text: str):
    """A named genotype, or a ``Genotype`` read from a JSON file (never eval)."""
    from search.spaces.genotypes import GENOTYPES, Genotype, get_genotype

    path = Path(text)
    if text in GENOTYPES or not (text.endswith(".json") or path.is_file()):
        return get_genotype(text)
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CLIError(f"--genotype {text}: cannot read it as JSON ({e})", file=str(path),
                       hint='write {"normal": [[op, input], ...], "normal_concat": [...], "reduce": [...], '
                            '"reduce_concat": [...]}') from None
    fields = list(Genotype._fields)
    if not isinstance(obj, dict) or set(obj) != set(fields):
        got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise CLIError(f"--genotype {text}: expected the keys {fields}, got {got}", file=str(path),
                       hint="the fields of the DARTS repository's Genotype")
    return Genotype(**obj)


def run_genotype(run: str, best: bool, cid: int | None):
    """``(genotype, description)`` of a search run's candidate: its decisions in the run's own darts space."""
    from search.spaces import get_space
    from search.spaces.base import SpaceError
    from search.store import Store, StoreError

    if not (best or cid is not None):
        raise CLIError(f"--run {run}: say which candidate's cell to build", hint="add --best, or --id N "
                                                                                "(archir gallery lists the ids)")
    try:
        with Store.open(run) as st:
            space_name = st.config.get("space")
            options = st.info("space_options")
    except StoreError as e:
        raise CLIError(str(e), hint=e.hint) from None
    if space_name != "darts" or options is None:
        raise CLIError(f"--run {run}: its candidates are from the {space_name!r} space, not cells of the darts space",
                       file=run, hint="give a run of 'archir search --space darts', or build the candidate's graph "
                                      "with 'archir export RUN --best'")
    from search.experiment import load_candidate_graph

    try:
        _, c = load_candidate_graph(run, cid=cid, best=best)
        space = get_space("darts", **{**options, "input_shape": tuple(options["input_shape"])})
    except (StoreError, SpaceError) as e:
        raise CLIError(str(e), hint=e.hint) from None
    err = c.metrics.get("val_error")
    return space.to_genotype(c.decisions), (f"candidate {c.id} of {run}" + (f" (val error {err:.3f})"
                                                                              if err is not None else ""))


def _run_build(args: argparse.Namespace) -> int:
    import archir
    import costmodels
    from search.spaces.darts import DartsSpace

    if args.from_run is not None:
        genotype, what = run_genotype(args.from_run, args.best, args.id)
        print(f"{what}: genotype {json.dumps(genotype._asdict())}")
        name = f"the cell of {what}"
    else:
        if args.best or args.id is not None:
            raise CLIError("--best/--id pick a candidate of --run RUN", hint="add --run RUN, or drop --best/--id")
        genotype, name = load_genotype(args.genotype), args.genotype
    imagenet = args.stem == "imagenet"
    shape = _shape(args.input) if args.input else ((3, 224, 224) if imagenet else (3, 32, 32))
    classes = args.classes if args.classes is not None else (1000 if imagenet else 10)
    space = DartsSpace.for_genotype(genotype, shape, classes, stem=args.stem)
    g = space.build(space.from_genotype(genotype), seed=args.seed, cells=args.cells, channels=args.channels,
                    auxiliary=args.auxiliary, drop_path=args.drop_path)
    path = archir.save(g, args.out)
    c = costmodels.count(g)
    print(f"{name}: {args.cells} cells x {args.channels} channels, {args.stem} stem, input "
          f"{'x'.join(map(str, shape))}: {c.params:,} params, {c.macs:,} MACs")
    if c.excluded:
        print(f"  {c.excluded_note()}; the papers count the same way")
    if args.drop_path:
        print(f"  drop_path {args.drop_path} on every non-identity edge (training only; removed on export)")
    print(f"wrote {path} (and {path.with_suffix('.safetensors').name}); export it with: archir export {path} "
          f"--onnx {path.with_suffix('.onnx')}")
    return 0


SUBCOMMANDS = [
    Subcommand("build", "build a DARTS/NASNet genotype (DARTS_V2, NASNet, AmoebaNet, PNAS, ENAS, ...) as a network",
               _add_build, _run_build,
               "Build the evaluation network of a published or searched cell genotype (the DARTS reference's "
               "NetworkCIFAR, or NetworkImageNet with --stem imagenet) and write it as NET.json + safetensors, "
               "optionally with the auxiliary head and drop-path used in training (both removed on export)."),
]
