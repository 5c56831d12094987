"""The morphism registry, ``legal_targets`` and ``random_morphism``."""

import numpy as np
import pytest

from archir import samples

import passes
from passes import MORPHISMS, PreconditionError, legal_targets, random_morphism, register_morphism
from passes.targets import morphism_names
from tests.passes import assert_morphism


def test_registry_has_the_morphisms():
    assert {"deepen", "insert_bn", "enlarge_kernel", "add_skip", "widen"} <= set(MORPHISMS)
    for name, (fn, tf) in MORPHISMS.items():
        assert fn.preserves == "function" and callable(tf), name


def test_legal_targets_by_name_or_function():
    g = samples.chain()
    assert legal_targets(g, "enlarge_kernel") == [{"node": "l0.conv", "kernel_size": 5},
                                                  {"node": "l1.conv", "kernel_size": 5}]
    assert legal_targets(g, passes.enlarge_kernel) == legal_targets(g, "enlarge_kernel")
    acts = {t["after"]: t["activation"] for t in legal_targets(g, "deepen")}
    assert acts["l0.relu"] == "relu" and acts["l0.pool"] == "relu" and acts["l0.bn"] is None and acts["x"] is None


def test_unknown_morphism():
    with pytest.raises(PreconditionError, match="unknown morphism 'grow'") as ei:
        legal_targets(samples.chain(), "grow")
    assert "deepen" in str(ei.value)
    with pytest.raises(PreconditionError, match="not a registered morphism"):
        legal_targets(samples.chain(), print)


def test_register_morphism():
    @passes.graph_pass(preserves="function")
    def noop(g, seed=0):
        return g.copy()

    def targets(g):
        return [{}]

    try:
        register_morphism("noop", noop, targets)
        register_morphism("noop", noop, targets)  # same entry again: fine
        with pytest.raises(ValueError, match="already registered"):
            register_morphism("noop", noop, lambda g: [])
        assert legal_targets(samples.chain(), "noop") == [{}]
        g2, desc = random_morphism(samples.chain(), 0, morphisms=["noop"])
        assert desc.startswith("noop(seed=")
        with pytest.raises(ValueError, match="callable"):
            register_morphism("bad", noop, None)
    finally:
        MORPHISMS.pop("noop", None)
    assert "noop" not in morphism_names()


def test_random_morphism_is_seeded_and_preserving():
    g = samples.resnet_like()
    a, da = random_morphism(g, np.random.default_rng(5))
    b, db = random_morphism(g, 5)
    assert da == db and a.structural_hash() == b.structural_hash() and a.weights_hash() == b.weights_hash()
    name = da.split("(")[0]
    assert name in MORPHISMS
    assert_morphism(g, a)
    seen = {random_morphism(g, s)[1].split("(")[0] for s in range(40)}
    assert seen == {"deepen", "insert_bn", "enlarge_kernel", "add_skip", "widen"}  # morphism first, then target


def test_random_morphism_restricted_and_no_targets():
    g = samples.chain()
    _, desc = random_morphism(g, 1, morphisms=["enlarge_kernel"])
    assert desc.startswith("enlarge_kernel(node=")
    g2 = passes.enlarge_kernel(passes.enlarge_kernel(g, "l0.conv", 5), "l0.conv", 7)
    g2 = passes.enlarge_kernel(passes.enlarge_kernel(g2, "l1.conv", 5), "l1.conv", 7)
    assert legal_targets(g2, "enlarge_kernel") == []
    with pytest.raises(PreconditionError, match="no morphism among \\['enlarge_kernel'\\] has a legal target"):
        random_morphism(g2, 0, morphisms=["enlarge_kernel"])


def test_random_morphism_reports_refused_moves():
    @passes.graph_pass(preserves="function")
    def always_refuses(g):
        raise PreconditionError("never")

    MORPHISMS["refuser"] = (always_refuses, lambda g: [{}])
    try:
        with pytest.raises(PreconditionError, match="3 random moves were all refused") as ei:
            random_morphism(samples.chain(), 0, morphisms=["refuser"], max_tries=3)
        assert "refuser(): pass 'always_refuses': never" in str(ei.value)
    finally:
        MORPHISMS.pop("refuser")
