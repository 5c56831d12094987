"""``enlarge_kernel``: zero-padded kernels with adjusted padding; every conv of every sample net."""

import numpy as np
import pytest

import archir
from archir import samples

import passes
from passes import PreconditionError, enlarge_kernel
from passes.enlarge_kernel import enlarge_kernel_targets
from tests.passes import SAMPLE_BUILDERS, assert_morphism, new_nodes, sample


@pytest.mark.parametrize("net", list(SAMPLE_BUILDERS))
def test_every_legal_target(net):
    g = sample(net)
    targets = enlarge_kernel_targets(g)
    assert targets and targets == passes.legal_targets(g, "enlarge_kernel")
    for kw in targets:
        g2 = enlarge_kernel(g, **kw)
        assert not new_nodes(g, g2) and len(g2) == len(g)
        n = g2.node(kw["node"])
        assert n.attrs["kernel_size"] == kw["kernel_size"]
        assert n.type == g.node(kw["node"]).type
        assert_morphism(g, g2)


def test_structure_strided_dilated_grouped():
    g = samples.darts_like(cells=2)
    node = "cell0.n1.e0.1"  # dil_conv: 3x3, dilation 2, padding 2, depthwise (step 1 after the relu)
    old = g.node(node)
    assert old.attrs["dilation"] == 2 and old.attrs["groups"] > 1
    g2 = enlarge_kernel(g, node, 7)
    n = g2.node(node)
    assert n.attrs["kernel_size"] == 7 and n.attrs["padding"] == 2 + 2 * 2
    w, w0 = n.params["weight"], old.params["weight"]
    assert w.shape == w0.shape[:2] + (7, 7)
    assert np.array_equal(w[:, :, 2:5, 2:5], w0) and np.abs(w).sum() == pytest.approx(np.abs(w0).sum())
    assert_morphism(g, g2)
    r = samples.resnet_like()
    for strided, k in (("b3.a.conv", 5), ("b3.proj.conv", 3)):  # stride 2, 3x3 and 1x1
        assert r.node(strided).attrs["stride"] == 2
        r2 = enlarge_kernel(r, strided, k)
        assert r2.node(strided).attrs["padding"] == r.node(strided).attrs["padding"] + 1
        assert_morphism(r, r2)


def test_rectangular_kernel():
    g = archir.Graph("rect")
    h = g.add("conv2d", g.input("x", (3, 9, 11)), out_channels=4, kernel_size=[1, 3], padding=[0, 1], name="c")
    g.set_outputs(g.add("relu", h))
    g.init_params(0).validate()
    g2 = enlarge_kernel(g, "c", [3, 5])
    assert g2.node("c").attrs["kernel_size"] == [3, 5] and g2.node("c").attrs["padding"] == [1, 2]
    assert_morphism(g, g2)
    assert enlarge_kernel_targets(g) == [{"node": "c", "kernel_size": [3, 5]}]


def test_refuses_shrinking():
    g = samples.chain()
    with pytest.raises(PreconditionError, match="would shrink the 3x3 kernel") as ei:
        enlarge_kernel(g, "l0.conv", 1)
    assert "pass 'enlarge_kernel': node 'l0.conv'" in str(ei.value)


def test_refuses_even_and_equal_sizes():
    g = samples.chain()
    with pytest.raises(PreconditionError, match=r"by an odd amount \(an even size\)"):
        enlarge_kernel(g, "l0.conv", 4)
    with pytest.raises(PreconditionError, match="is the current size"):
        enlarge_kernel(g, "l0.conv", 3)
    with pytest.raises(PreconditionError, match="an int or a pair of ints"):
        enlarge_kernel(g, "l0.conv", 5.0)


def test_refuses_non_convs_and_unknown_nodes():
    g = samples.chain()
    with pytest.raises(PreconditionError, match="applies to conv2d nodes, this is a linear"):
        enlarge_kernel(g, "head", 3)
    with pytest.raises(PreconditionError, match="no node 'conv'") as ei:
        enlarge_kernel(g, "conv", 5)
    assert "'l0.conv', 'l1.conv'" in str(ei.value)
