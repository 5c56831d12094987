"""``insert_bn``: an eval-mode identity BN after a node; every legal target of every sample net."""

import numpy as np
import pytest

from archir import samples

import passes
from passes import PreconditionError, insert_bn
from passes.insert_bn import insert_bn_targets
from tests.passes import SAMPLE_BUILDERS, assert_morphism, new_nodes, sample


@pytest.mark.parametrize("net", list(SAMPLE_BUILDERS))
def test_every_legal_target(net):
    g = sample(net)
    targets = insert_bn_targets(g)
    assert targets and targets == passes.legal_targets(g, "insert_bn")
    for i, kw in enumerate(targets):
        g2 = insert_bn(g, **kw)
        bn = f"{kw['after']}.bn"
        assert new_nodes(g, g2) == {bn} and g2.node(bn).op == "batchnorm2d"
        assert g2.users_of(kw["after"]) == [(bn, 0)]
        assert_morphism(g, g2, onnx=i % 4 == 1)


def test_structure_and_weights():
    g = samples.resnet_like()
    g2 = insert_bn(g, after="b1.add", eps=1e-3)
    bn = "b1.add.bn"
    assert g2.inputs_of(bn) == ["b1.add"] and g2.inputs_of("b1.out") == [bn]
    n = g2.node(bn)
    assert n.attrs["eps"] == 1e-3 and np.allclose(n.params["weight"], np.sqrt(1 + 1e-3))
    assert not n.params["bias"].any() and not n.buffers["running_mean"].any()
    assert np.all(n.buffers["running_var"] == 1)
    assert_morphism(g, g2)


def test_name_clash_gets_a_fresh_name():
    g = samples.chain()
    # "l0.conv.bn" is free but "l0.bn" exists; inserting after l0 twice gives .bn and .bn_2
    g2 = insert_bn(insert_bn(g, after="l0.conv"), after="l0.conv")
    assert {"l0.conv.bn", "l0.conv.bn_2"} <= set(g2)
    assert_morphism(g, g2, onnx=False)


def test_train_mode_is_not_preserved():
    # documents why the check runs in eval mode: in train mode BN normalises by batch statistics
    import torch
    from archir.lower import to_fx

    g = samples.chain()
    g2 = insert_bn(g, after="l1.relu")
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    a, b = to_fx(g).train(), to_fx(g2).train()
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x), atol=1e-5)


def test_refusals():
    g = samples.chain()
    with pytest.raises(PreconditionError, match=r"\(C, H, W\)"):
        insert_bn(g, after="head")
    with pytest.raises(PreconditionError, match="no node 'l9.conv'") as ei:
        insert_bn(g, after="l9.conv")
    assert "'l0.conv'" in str(ei.value)
    with pytest.raises(PreconditionError, match="eps must be a non-negative"):
        insert_bn(g, after="l0.conv", eps=-1)
