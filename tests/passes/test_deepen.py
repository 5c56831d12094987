"""``deepen``: identity conv[-bn][-relu] after a node; every legal target of every sample net."""

import numpy as np
import pytest

from archir import samples

import passes
from passes import PreconditionError, deepen
from passes.deepen import deepen_targets
from tests.passes import SAMPLE_BUILDERS, assert_morphism, new_nodes, sample


@pytest.mark.parametrize("net", list(SAMPLE_BUILDERS))
def test_every_legal_target(net):
    g = sample(net)
    targets = deepen_targets(g)
    assert targets and targets == passes.legal_targets(g, "deepen")
    for i, kw in enumerate(targets):
        g2 = deepen(g, **kw)
        added = new_nodes(g, g2)
        # fired: conv + bn (+ relu) after the target; the consumers read the new block
        assert len(added) == 2 + (kw["activation"] is not None), kw
        conv = f"{kw['after']}.deepen.conv"
        assert conv in added and g2.inputs_of(conv) == [kw["after"]]
        assert g2.users_of(kw["after"]) == [(conv, 0)]
        # the ONNX comparison is the slow part: run it on a spread of targets
        assert_morphism(g, g2, onnx=i % 4 == 0)


def test_structure_and_weights():
    g = samples.chain()
    g2 = deepen(g, after="l0.relu", kernel_size=5)
    assert len(g2) == len(g) + 3
    conv, bn, relu = "l0.relu.deepen.conv", "l0.relu.deepen.bn", "l0.relu.deepen.relu"
    assert g2.inputs_of(conv) == ["l0.relu"] and g2.inputs_of(bn) == [conv] and g2.inputs_of(relu) == [bn]
    assert g2.inputs_of("l0.pool") == [relu]
    a = g2.node(conv).attrs
    assert a["kernel_size"] == 5 and a["padding"] == 2 and a["bias"] is False and a["groups"] == 1
    w = g2.node(conv).params["weight"]
    assert w.shape == (8, 8, 5, 5) and w.sum() == 8 and np.all(w[np.arange(8), np.arange(8), 2, 2] == 1)
    b = g2.node(bn)
    eps = b.attrs["eps"]
    assert np.allclose(b.params["weight"], np.sqrt(1 + eps)) and not b.params["bias"].any()
    assert not b.buffers["running_mean"].any() and np.all(b.buffers["running_var"] == 1)
    assert_morphism(g, g2)
    # the input graph is untouched
    assert len(g) == len(g2) - 3 and g.inputs_of("l0.pool") == ["l0.relu"]


def test_variants_without_bn_or_activation():
    g = samples.chain()
    g2 = deepen(g, after="l0.bn", with_bn=False, activation=None)
    assert new_nodes(g, g2) == {"l0.bn.deepen.conv"}
    assert_morphism(g, g2)
    g3 = deepen(g, after="l0.conv", kernel_size=1, activation=None)
    assert g3.node("l0.conv.deepen.conv").params["weight"].shape == (8, 8, 1, 1)
    assert_morphism(g, g3)


def test_repeated_deepen_gets_fresh_names():
    g = samples.chain()
    g2 = deepen(deepen(g, after="l0.relu"), after="l0.relu")
    assert "l0.relu.deepen_2.conv" in g2 and g2.inputs_of("l0.relu.deepen_2.conv") == ["l0.relu"]
    assert_morphism(g, g2, onnx=False)


def test_after_an_output_and_after_the_input():
    g = samples.chain()
    g1 = g.copy()
    g1.set_outputs("l1.relu")  # a (C, H, W) output
    g2 = deepen(g1, after="l1.relu")
    assert g2.outputs == ("l1.relu.deepen.relu",)
    assert_morphism(g1, g2)
    g3 = deepen(g, after="x", activation=None)
    assert g3.inputs_of("l0.conv") == ["x.deepen.bn"]
    assert_morphism(g, g3)


def test_relu6_only_on_0_6():
    g = samples.mobilenet_like()
    g2 = deepen(g, after="ir1.expand.relu6", activation="relu6")
    assert "ir1.expand.relu6.deepen.relu6" in g2
    assert_morphism(g, g2)
    with pytest.raises(PreconditionError, match=r"relu6 is the identity only on \[0, 6\]"):
        deepen(samples.chain(), after="l0.relu", activation="relu6")  # relu output is unbounded above


def test_relu_after_sigmoid_like_and_pools():
    g = samples.mobilenet_like()
    assert_morphism(g, deepen(g, after="ir1.se.gate"), onnx=False)  # hardsigmoid: [0, 1]
    g = samples.chain()
    assert_morphism(g, deepen(g, after="l0.pool"), onnx=False)  # maxpool of relu


def test_refuses_activation_on_signed_input():
    g = samples.chain()
    with pytest.raises(PreconditionError) as ei:
        deepen(g, after="l0.bn")
    msg = str(ei.value)
    assert msg.startswith("pass 'deepen': node 'l0.bn': relu is the identity only on [0, inf]")
    assert "not known to be bounded" in msg and "activation=None" in msg


def test_refuses_non_idempotent_activation():
    with pytest.raises(PreconditionError, match="'sigmoid' is not idempotent"):
        deepen(samples.chain(), after="l0.relu", activation="sigmoid")


def test_refuses_illegal_targets():
    g = samples.chain()
    with pytest.raises(PreconditionError, match=r"must produce a \(C, H, W\) feature map") as ei:
        deepen(g, after="flatten")
    assert "'flatten'" in str(ei.value)
    with pytest.raises(PreconditionError, match="positive odd int"):
        deepen(g, after="l0.relu", kernel_size=4)


def test_unknown_node_lists_legal_targets():
    g = samples.chain()
    with pytest.raises(PreconditionError) as ei:
        deepen(g, after="nope")
    msg = str(ei.value)
    assert "no node 'nope'" in msg and "'x', 'l0.conv', 'l0.bn'" in msg and "legal_targets" in msg
