"""Published cells as archir builds them, against the DARTS reference and the papers (issue 14).

For every genotype of ``search.spaces.genotypes`` it builds DARTS' CIFAR network (20 cells,
36 channels, 3x32x32, 10 classes) and its ImageNet mobile network (14 cells, 48 channels,
3x224x224, 1000 classes, the two stride-2 stems) with ``DartsSpace.for_genotype(...).build``,
auxiliary head included, and prints:

- archir's parameter and MAC counts (``costmodels.count``: the head excluded, as the papers
  count), and those of an independent PyTorch transcription of the DARTS reference network
  (``tests/search/darts_reference.py``: parameters outside ``auxiliary``, conv + linear MACs by
  forward hooks), side by side in one run; goal: equal to the unit;
- the paper's figures where one reports them (``PAPER_FIGURES``: DARTS paper Tables 1 and 2;
  NASNet, AmoebaNet and PNAS report their own, differently sized networks there);
- the time to build each network, and what a CIFAR stem would cost on a 224x224 input (the
  MACs ratio against the ImageNet stems: why ``build`` warns about it).

Run it::

    python benchmarks/genotypes.py           # every genotype, both sizes (about 15 s)
    python benchmarks/genotypes.py --quick   # DARTS_V2 only
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests/ transcription

import torch  # noqa: E402

import costmodels  # noqa: E402
from search.spaces.darts import DartsSpace  # noqa: E402
from search.spaces.genotypes import GENOTYPES, PAPER_FIGURES  # noqa: E402
from tests.search.darts_reference import NetworkCIFAR, NetworkImageNet, reference_counts  # noqa: E402

LAYOUTS = {"cifar10": ("cifar", (3, 32, 32), 10, 20, 36), "imagenet": ("imagenet", (3, 224, 224), 1000, 14, 48)}


def _m(v: float | None) -> str:
    return "-" if v is None else f"{v / 1e6:.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="DARTS_V2 only")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    names = ["DARTS_V2"] if args.quick else [n for n in GENOTYPES if n != "DARTS"]
    print("genotype   net       params(M) archir / reference / paper   MACs(M) archir / reference / paper   "
          "build s  equal")
    all_equal = True
    for name in names:
        genotype = GENOTYPES[name]
        for key, (stem, shape, classes, cells, channels) in LAYOUTS.items():
            t = time.perf_counter()
            space = DartsSpace.for_genotype(genotype, shape, classes, stem=stem)
            g = space.build(space.from_genotype(genotype), cells=cells, channels=channels, auxiliary=True)
            built = time.perf_counter() - t
            c = costmodels.count(g)
            net = (NetworkCIFAR if key == "cifar10" else NetworkImageNet)(channels, classes, cells, True, genotype)
            ref = reference_counts(net, (1,) + shape)
            paper = PAPER_FIGURES.get(name, {}).get(key, {})
            pp = paper.get("params_m")
            pm = paper.get("mult_adds_m")
            equal = (c.params, c.macs) == (ref["params"], ref["macs"])
            all_equal &= equal
            print(f"{name:10s} {key:9s} {_m(c.params):>9s} / {_m(ref['params']):>6s} / "
                  f"{'-' if pp is None else f'{pp:.1f}':>4s}            "
                  f"{_m(c.macs):>8s} / {_m(ref['macs']):>7s} / {'-' if pm is None else f'{pm:.0f}':>4s}"
                  f"          {built:6.2f}  {'yes' if equal else 'NO'}")
    # what the paper-size ImageNet input costs through a CIFAR stem
    genotype = GENOTYPES["DARTS_V2"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        full = DartsSpace.for_genotype(genotype, (3, 224, 224), 1000).build(
            DartsSpace.for_genotype(genotype).from_genotype(genotype), cells=14, channels=48)
    mobile = DartsSpace.for_genotype(genotype, (3, 224, 224), 1000, stem="imagenet")
    mob = mobile.build(mobile.from_genotype(genotype), cells=14, channels=48)
    r = costmodels.count(full).macs / costmodels.count(mob).macs
    print(f"\nDARTS_V2 at 224x224, 14 cells x 48: CIFAR stem {costmodels.count(full).macs / 1e9:.1f} G MACs vs "
          f"ImageNet stems {costmodels.count(mob).macs / 1e6:.0f} M MACs: {r:.0f}x (build(..., stem='cifar') "
          "warns)")
    print(f"goal: archir's counts equal the reference transcription's for every genotype and size: "
          f"{'PASS' if all_equal else 'FAIL'}")
    return 0 if all_equal else 1


if __name__ == "__main__":
    raise SystemExit(main())
