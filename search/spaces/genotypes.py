"""The published cells of the seed papers, as DARTS ``Genotype`` s.

A genotype lists, for the normal and for the reduction cell, two ``(op, input)`` pairs per
intermediate node (node 0 first): ``input`` 0 and 1 are the cell's two inputs (the outputs of the
two cells before it), ``k + 2`` is intermediate node ``k``. ``normal_concat`` / ``reduce_concat``
are the states the cell output concatenates (NASNet and AmoebaNet concatenate only their "loose
ends", the nodes nothing in the cell reads). The field names are those of the DARTS repository
(``cnn/genotypes.py``), so a genotype printed by DARTS or one of its descendants pastes in as is.

Op names are the DARTS reference's (``archir.cells.PRIMITIVES``). Build one with
``DartsSpace.for_genotype(name).build(...)`` or ``archir build --genotype NAME``.

Sources (each compared with more than one public transcription):

- ``DARTS_V1`` / ``DARTS_V2``: Liu, Simonyan, Yang, "DARTS: Differentiable Architecture
  Search", ICLR 2019; the authors' repository quark0/darts, ``cnn/genotypes.py`` (first- and
  second-order search); the same in D-X-Y/AutoDL-Projects ``nas_infer_model/DXYs/genotypes.py``
  and SNAS-Series/SNAS-Series ``SNAS/genotypes.py``. ``DARTS`` is ``DARTS_V2``, as there.
- ``NASNet``: NASNet-A, Zoph, Vasudevan, Shlens, Le, "Learning Transferable Architectures for
  Scalable Image Recognition", CVPR 2018, Fig. 4; as transcribed in quark0/darts
  ``cnn/genotypes.py`` (and, identically, AutoDL-Projects' ``DXYs/genotypes.py``).
- ``AmoebaNet``: AmoebaNet-A, Real, Aggarwal, Huang, Le, "Regularized Evolution for Image
  Classifier Architecture Search", AAAI 2019, Fig. 4; quark0/darts ``cnn/genotypes.py``.
- ``PNAS``: PNASNet-5, Liu et al., "Progressive Neural Architecture Search", ECCV 2018, Fig. 1
  (the same cell for both kinds); as in chenxi116/PNASNet.pytorch ``genotypes.py`` and
  AutoDL-Projects' ``DXYs/genotypes.py`` (``PNASNet``).
- ``ENAS``: the ENAS convolutional cell, Pham, Guan, Zoph, Le, Dean, "Efficient Neural
  Architecture Search via Parameter Sharing", ICML 2018 (arXiv:1802.03268), Fig. 7; as
  transcribed (``ENASNet``) in xiaomi-automl/FairDARTS ``fairdarts/genotypes.py`` and in later
  copies of AutoDL-Projects' ``DXYs/genotypes.py``.
- ``SNAS``: the mild-constraint cell of Xie, Zheng, Liu, Lin, "SNAS: Stochastic Neural
  Architecture Search", ICLR 2019 (arXiv:1812.09926), as the authors state it: ``SNAS_mild`` in
  SNAS-Series/SNAS-Series ``SNAS/genotypes.py``. (FairDARTS and other DARTS-family repositories
  carry the same cell with the two pairs of one node listed in the other order -- the same
  network.) The authors evaluate it as ``SNAS_mild_edge_all``, which adds only ``none`` edges.
- PARSEC's cells (Casale, Gordon, Fusi, "Probabilistic Neural Architecture Search", 2019) are not
  stated as a genotype in any public source we could find, so none is shipped.
"""

from __future__ import annotations

from collections import namedtuple

from search.spaces.base import SpaceError

__all__ = ["Genotype", "GENOTYPES", "PAPER_FIGURES", "get_genotype", "DARTS_V1", "DARTS_V2", "DARTS", "NASNet",
           "AmoebaNet", "PNAS", "ENAS", "SNAS"]

Genotype = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")

# DARTS, first order (Liu et al., ICLR 2019): quark0/darts cnn/genotypes.py DARTS_V1
DARTS_V1 = Genotype(
    normal=[("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)],
    reduce_concat=[2, 3, 4, 5])

# DARTS, second order (Liu et al., ICLR 2019): quark0/darts cnn/genotypes.py DARTS_V2
DARTS_V2 = Genotype(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
    reduce_concat=[2, 3, 4, 5])

DARTS = DARTS_V2

# NASNet-A (Zoph et al., CVPR 2018, Fig. 4): quark0/darts cnn/genotypes.py NASNet
NASNet = Genotype(
    normal=[("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 0), ("sep_conv_3x3", 0),
            ("avg_pool_3x3", 1), ("skip_connect", 0), ("avg_pool_3x3", 0), ("avg_pool_3x3", 0),
            ("sep_conv_3x3", 1), ("skip_connect", 1)],
    normal_concat=[2, 3, 4, 5, 6],
    reduce=[("sep_conv_5x5", 1), ("sep_conv_7x7", 0), ("max_pool_3x3", 1), ("sep_conv_7x7", 0),
            ("avg_pool_3x3", 1), ("sep_conv_5x5", 0), ("skip_connect", 3), ("avg_pool_3x3", 2),
            ("sep_conv_3x3", 2), ("max_pool_3x3", 1)],
    reduce_concat=[4, 5, 6])

# AmoebaNet-A (Real et al., AAAI 2019, Fig. 4): quark0/darts cnn/genotypes.py AmoebaNet
AmoebaNet = Genotype(
    normal=[("avg_pool_3x3", 0), ("max_pool_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 2),
            ("sep_conv_3x3", 0), ("avg_pool_3x3", 3), ("sep_conv_3x3", 1), ("skip_connect", 1),
            ("skip_connect", 0), ("avg_pool_3x3", 1)],
    normal_concat=[4, 5, 6],
    reduce=[("avg_pool_3x3", 0), ("sep_conv_3x3", 1), ("max_pool_3x3", 0), ("sep_conv_7x7", 2),
            ("sep_conv_7x7", 0), ("avg_pool_3x3", 1), ("max_pool_3x3", 0), ("max_pool_3x3", 1),
            ("conv_7x1_1x7", 0), ("sep_conv_3x3", 5)],
    reduce_concat=[3, 4, 6])

# PNASNet-5 (Liu et al., ECCV 2018, Fig. 1), one cell for both kinds: chenxi116/PNASNet.pytorch genotypes.py
_PNAS_CELL = [("sep_conv_5x5", 0), ("max_pool_3x3", 0), ("sep_conv_7x7", 1), ("max_pool_3x3", 1),
              ("sep_conv_5x5", 1), ("sep_conv_3x3", 1), ("sep_conv_3x3", 4), ("max_pool_3x3", 1),
              ("sep_conv_3x3", 0), ("skip_connect", 1)]
PNAS = Genotype(normal=list(_PNAS_CELL), normal_concat=[2, 3, 4, 5, 6], reduce=list(_PNAS_CELL),
                reduce_concat=[2, 3, 4, 5, 6])

# ENAS (Pham et al., ICML 2018, Fig. 7): xiaomi-automl/FairDARTS fairdarts/genotypes.py ENASNet
ENAS = Genotype(
    normal=[("sep_conv_3x3", 1), ("skip_connect", 1), ("sep_conv_5x5", 1), ("skip_connect", 0),
            ("avg_pool_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("avg_pool_3x3", 1),
            ("sep_conv_5x5", 1), ("avg_pool_3x3", 0)],
    normal_concat=[2, 3, 4, 5, 6],
    reduce=[("sep_conv_5x5", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 1), ("avg_pool_3x3", 1),
            ("sep_conv_3x3", 1), ("avg_pool_3x3", 1), ("avg_pool_3x3", 1), ("sep_conv_5x5", 4),
            ("sep_conv_3x3", 5), ("sep_conv_5x5", 0)],
    reduce_concat=[2, 3, 4, 5, 6])

# the authors' SNAS_mild (SNAS-Series/SNAS-Series, SNAS/genotypes.py)
SNAS = Genotype(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("skip_connect", 0), ("dil_conv_3x3", 1),
            ("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 0), ("sep_conv_3x3", 1)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("max_pool_3x3", 1), ("skip_connect", 2),
            ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0), ("dil_conv_5x5", 2)],
    reduce_concat=[2, 3, 4, 5])

#: every shipped genotype by name
GENOTYPES: dict[str, Genotype] = {"DARTS_V1": DARTS_V1, "DARTS_V2": DARTS_V2, "DARTS": DARTS, "NASNet": NASNet,
                                  "AmoebaNet": AmoebaNet, "PNAS": PNAS, "ENAS": ENAS, "SNAS": SNAS}

#: What the papers report for the networks built from these cells, where they state it.
#: ``cifar10``: params (M) and test error (%) with cutout, from Table 1 of the DARTS paper (the
#: NASNet, AmoebaNet, PNAS and ENAS networks there are their papers' own, whose depth and width
#: differ from DARTS' 20 cells x 36 channels; DARTS' own are that layout). ``imagenet``: the mobile
#: setting (< 600M mult-adds), params (M), mult-adds (M) and top-1 error (%), from Table 2 of the
#: DARTS paper (DARTS: 14 cells, 48 channels). ``layout`` says which network the figures are of.
PAPER_FIGURES: dict[str, dict] = {
    "DARTS_V1": {"cifar10": {"params_m": 3.3, "test_error": 3.00, "layout": "20 cells, 36 channels"},
                 "source": "DARTS (ICLR 2019), Table 1 (first order)"},
    "DARTS_V2": {"cifar10": {"params_m": 3.3, "test_error": 2.76, "layout": "20 cells, 36 channels"},
                 "imagenet": {"params_m": 4.7, "mult_adds_m": 574, "top1_error": 26.7,
                              "layout": "14 cells, 48 channels"},
                 "source": "DARTS (ICLR 2019), Tables 1 and 2 (second order)"},
    "NASNet": {"cifar10": {"params_m": 3.3, "test_error": 2.65, "layout": "NASNet-A + cutout"},
               "imagenet": {"params_m": 5.3, "mult_adds_m": 564, "top1_error": 26.0, "layout": "NASNet-A mobile"},
               "source": "DARTS (ICLR 2019), Tables 1 and 2, quoting Zoph et al. (CVPR 2018)"},
    "AmoebaNet": {"cifar10": {"params_m": 3.2, "test_error": 3.34, "layout": "AmoebaNet-A + cutout"},
                  "imagenet": {"params_m": 5.1, "mult_adds_m": 555, "top1_error": 25.5,
                               "layout": "AmoebaNet-A mobile"},
                  "source": "DARTS (ICLR 2019), Tables 1 and 2, quoting Real et al. (AAAI 2019)"},
    "PNAS": {"cifar10": {"params_m": 3.2, "test_error": 3.41, "layout": "PNASNet-5"},
             "imagenet": {"params_m": 5.1, "mult_adds_m": 588, "top1_error": 25.8, "layout": "PNASNet-5 mobile"},
             "source": "DARTS (ICLR 2019), Tables 1 and 2, quoting Liu et al. (ECCV 2018)"},
    "ENAS": {"cifar10": {"params_m": 4.6, "test_error": 2.89, "layout": "ENAS + cutout"},
             "source": "DARTS (ICLR 2019), Table 1, quoting Pham et al. (ICML 2018)"},
    "SNAS": {"cifar10": {"test_error": 2.98, "layout": "20 cells, 36 channels"},
             "source": "SNAS-Series/SNAS-Series SNAS/README.md (mild constraint, 97.02% top-1)"},
}
PAPER_FIGURES["DARTS"] = PAPER_FIGURES["DARTS_V2"]


def get_genotype(name: str) -> Genotype:
    """The shipped genotype called ``name`` (case-insensitive: ``"darts_v2"``, ``"nasnet"``).

    Raises:
        SpaceError: an unknown name; the message lists the known ones.
    """
    if isinstance(name, Genotype):
        return name
    if isinstance(name, str):
        for key, g in GENOTYPES.items():
            if key.lower() == name.strip().lower():
                return g
    raise SpaceError(f"unknown genotype {name!r}; known: {', '.join(GENOTYPES)}",
                     hint="pass one of those names, or your own Genotype(normal, normal_concat, reduce, "
                          "reduce_concat) (archir build --genotype also reads one as a JSON file)")
