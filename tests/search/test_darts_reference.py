"""The published genotypes (``search.spaces.genotypes``) and the DARTS reference networks built from them.

``tests/search/darts_reference.py`` is an independent transcription of the DARTS authors'
evaluation networks; its counts for DARTS_V2 are checked against the figures the DARTS repository
prints (3,349,342 parameters on CIFAR-10, 4,718,752 on ImageNet), and its counts for every shipped
genotype are pinned in ``REFERENCE_FIGURES``.
"""

from __future__ import annotations

import pytest
import torch
import torch.fx

from search.spaces.base import SpaceError
from search.spaces.genotypes import DARTS, DARTS_V2, GENOTYPES, PAPER_FIGURES, Genotype, get_genotype
from tests.search.darts_reference import (CIFAR_LAYOUT, IMAGENET_LAYOUT, OPS, REFERENCE_FIGURES, Identity,
                                          NetworkCIFAR, build_reference, reference_counts)

DARTS_OPS = {"none", "avg_pool_3x3", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7",
             "dil_conv_3x3", "dil_conv_5x5", "conv_7x1_1x7"}
LAYOUTS = {"cifar10": CIFAR_LAYOUT, "imagenet": IMAGENET_LAYOUT}


# ------------------------------------------------------------------------------ the genotypes
@pytest.mark.parametrize("name", sorted(GENOTYPES))
def test_genotype_is_well_formed(name):
    g = GENOTYPES[name]
    assert isinstance(g, Genotype)
    for pairs, concat in ((g.normal, g.normal_concat), (g.reduce, g.reduce_concat)):
        assert len(pairs) % 2 == 0, "two (op, input) pairs per node"
        nodes = len(pairs) // 2
        assert nodes in (4, 5)
        for k in range(nodes):
            for op, inp in pairs[2 * k:2 * k + 2]:
                assert op in DARTS_OPS, op
                assert isinstance(inp, int) and 0 <= inp < k + 2, (k, inp)
        concat = list(concat)
        assert concat and len(set(concat)) == len(concat)
        assert all(isinstance(i, int) and 0 <= i < nodes + 2 for i in concat)
        # every intermediate node is used: concatenated or read by a later node
        read = {inp for _, inp in pairs}
        assert all(s in concat or s in read for s in range(2, nodes + 2))


def test_genotype_table_keys_and_aliases():
    for key in ("DARTS_V1", "DARTS_V2", "DARTS", "NASNet", "AmoebaNet", "PNAS", "ENAS"):
        assert key in GENOTYPES
    assert GENOTYPES["DARTS"] is DARTS is DARTS_V2
    assert set(REFERENCE_FIGURES) == set(GENOTYPES)
    assert set(PAPER_FIGURES) <= set(GENOTYPES)
    # PNASNet-5 uses one cell for both kinds
    pnas = GENOTYPES["PNAS"]
    assert list(pnas.normal) == list(pnas.reduce) and list(pnas.normal_concat) == list(pnas.reduce_concat)
    # the loose-end concatenation of NASNet-A and AmoebaNet-A
    assert list(GENOTYPES["NASNet"].reduce_concat) == [4, 5, 6]
    assert list(GENOTYPES["AmoebaNet"].normal_concat) == [4, 5, 6]
    assert list(GENOTYPES["AmoebaNet"].reduce_concat) == [3, 4, 6]


def test_get_genotype_is_case_insensitive():
    assert get_genotype("darts_v2") is DARTS_V2
    assert get_genotype("DARTS") is DARTS_V2
    assert get_genotype("nasnet") is GENOTYPES["NASNet"]
    assert get_genotype("AMOEBANET") is GENOTYPES["AmoebaNet"]
    assert get_genotype(DARTS_V2) is DARTS_V2  # a Genotype passes through


def test_get_genotype_unknown_lists_names():
    with pytest.raises(SpaceError) as info:
        get_genotype("darts_v3")
    text = str(info.value)
    assert "darts_v3" in text
    for key in GENOTYPES:
        assert key in text
    assert "Genotype" in text  # how to fix: a name or your own Genotype


def test_paper_figures_shape():
    for name, fig in PAPER_FIGURES.items():
        assert "source" in fig and fig["source"]
        if "cifar10" in fig:
            assert 0 < fig["cifar10"]["test_error"] < 10
        if "imagenet" in fig:
            im = fig["imagenet"]
            assert im["mult_adds_m"] < 600  # the mobile setting
            assert 20 < im["top1_error"] < 30
    d = PAPER_FIGURES["DARTS_V2"]
    assert (d["cifar10"]["params_m"], d["cifar10"]["test_error"]) == (3.3, 2.76)
    assert (d["imagenet"]["params_m"], d["imagenet"]["mult_adds_m"], d["imagenet"]["top1_error"]) == (4.7, 574, 26.7)


# ------------------------------------------------------------------------- reference networks
def test_darts_v2_anchors():
    """The figures the DARTS repository gives for its own network (count_parameters_in_MB)."""
    cifar = reference_counts(build_reference(DARTS_V2, "cifar10"), CIFAR_LAYOUT["input_shape"])
    assert cifar == {"params": 3_349_342, "macs": 528_359_040}
    imagenet = build_reference(DARTS_V2, "imagenet")
    params = sum(p.numel() for n, p in imagenet.named_parameters() if "auxiliary" not in n)
    assert params == 4_718_752


@pytest.mark.parametrize("dataset", ["cifar10", "imagenet"])
@pytest.mark.parametrize("name", sorted(set(GENOTYPES) - {"DARTS"}))
def test_reference_figures(name, dataset):
    torch.manual_seed(0)
    model = build_reference(GENOTYPES[name], dataset)
    assert reference_counts(model, LAYOUTS[dataset]["input_shape"]) == REFERENCE_FIGURES[name][dataset]


def test_paper_params_agree_with_reference():
    """DARTS' own CIFAR network is the 20-cell, 36-channel layout the reference builds."""
    for name in ("DARTS_V1", "DARTS_V2"):
        paper = PAPER_FIGURES[name]["cifar10"]["params_m"]
        assert abs(REFERENCE_FIGURES[name]["cifar10"]["params"] / 1e6 - paper) < 0.15
    im = PAPER_FIGURES["DARTS_V2"]["imagenet"]["params_m"]
    assert abs(REFERENCE_FIGURES["DARTS_V2"]["imagenet"]["params"] / 1e6 - im) < 0.15


@pytest.mark.parametrize("dataset", ["cifar10", "imagenet"])
def test_auxiliary_head_present_and_excluded(dataset):
    with_aux = build_reference(DARTS_V2, dataset, auxiliary=True)
    without = build_reference(DARTS_V2, dataset, auxiliary=False)
    aux = sum(p.numel() for n, p in with_aux.named_parameters() if n.startswith("auxiliary_head."))
    assert aux > 0
    shape = LAYOUTS[dataset]["input_shape"]
    assert reference_counts(with_aux, shape) == reference_counts(without, shape)
    assert sum(p.numel() for p in with_aux.parameters()) == sum(p.numel() for p in without.parameters()) + aux
    # the ImageNet head has no BatchNorm after its 2x2 convolution, the CIFAR head has one
    bns = [m for m in with_aux.auxiliary_head.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == (2 if dataset == "cifar10" else 1)
    # the head runs in training only, on the output of cell 2 * layers // 3
    x = torch.randn(2, *shape[1:])
    with_aux.train()
    with torch.no_grad():
        logits, logits_aux = with_aux(x)
    assert logits.shape == logits_aux.shape == (2, LAYOUTS[dataset]["num_classes"])
    with_aux.eval()
    with torch.no_grad():
        _, logits_aux = with_aux(x)
    assert logits_aux is None


def test_fx_symbolic_trace_in_eval():
    torch.manual_seed(0)
    model = NetworkCIFAR(8, 10, 5, True, DARTS_V2).eval()
    model.drop_path_prob = 0.2  # ignored in eval
    gm = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref_logits, ref_aux = model(x)
        logits, aux = gm(x)
    assert ref_aux is None and aux is None
    torch.testing.assert_close(logits, ref_logits)
    targets = {str(n.target) for n in gm.graph.nodes if n.op == "call_module"}
    assert not any(t.startswith("auxiliary_head") for t in targets)


def test_drop_path_changes_outputs_in_train_only():
    torch.manual_seed(0)
    model = NetworkCIFAR(8, 10, 5, False, DARTS_V2)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        model.drop_path_prob = 0.0
        base = model(x)[0]
        model.drop_path_prob = 0.5
        torch.testing.assert_close(model(x)[0], base)  # eval: drop-path off
    # train mode, BatchNorm batch statistics both times: only the drop-path draw differs
    model.train()
    with torch.no_grad():
        model.drop_path_prob = 0.0
        torch.manual_seed(1)
        a = model(x)[0]
        torch.manual_seed(1)
        b = model(x)[0]
        torch.testing.assert_close(a, b)
        model.drop_path_prob = 0.5
        torch.manual_seed(1)
        c = model(x)[0]
    assert not torch.allclose(a, c)


def test_skip_connect_is_identity_and_reduces():
    """``skip_connect`` is :class:`Identity` at stride 1 (drop-path passes it by) and a
    FactorizedReduce at stride 2; every op keeps or halves the resolution as its stride says."""
    assert isinstance(OPS["skip_connect"](8, 1, True), Identity)
    x = torch.randn(2, 8, 16, 16)
    for name, make in OPS.items():
        for stride in (1, 2):
            op = make(8, stride, True).eval()
            with torch.no_grad():
                assert op(x).shape == (2, 8, 16 // stride, 16 // stride), (name, stride)
