"""Training-time constructs of the DARTS/NASNet evaluation recipe, and ``strip_training``.

The seed papers (NASNet, DARTS) train a final network with two extras that inference never runs:

- ``drop_path(x, p)``: in training, each sample's tensor is zeroed with probability ``p`` and the
  survivors are scaled by ``1 / (1 - p)`` (DARTS' ``drop_path``: ``mask = bernoulli(1 - p)`` of shape
  ``(N, 1, 1, 1)``, ``x / (1 - p) * mask``); in eval mode it is the identity. DARTS ramps the rate
  linearly over the epochs: :func:`archir.lower.set_drop_path` sets that ramp on a lowered module.
- ``auxiliary(x, weight)``: marks an auxiliary classifier output (its value is ``x``). A graph lists
  it among its outputs after the main one (``g.set_outputs(logits, aux)``); the trainer's loss is
  ``CE(main) + sum(weight_i * CE(aux_i))``. The nodes that only auxiliary outputs need are the
  *auxiliary head* (:func:`auxiliary_head`).

:func:`strip_training` makes the inference network: every ``drop_path`` bypassed, every auxiliary
output removed with its head. ``archir.lower.to_onnx``, ``archir.derive`` and ``passes.finalize``
strip; ``archir.lower.to_fx`` trains with both (``to_fx(g, training_ops=False)`` lowers the stripped
graph); ``costmodels.count`` leaves the auxiliary head out of every total, as the papers count.

Example:
    >>> import archir
    >>> g = archir.Graph("aux")
    >>> x = g.input("x", shape=(4, 8, 8))
    >>> h = g.add("drop_path", g.add("conv2d", x, out_channels=4, kernel_size=3, padding=1, name="c"), name="dp")
    >>> logits = g.add("linear", g.add("flatten", g.add("global_avgpool", h)), out_features=3, name="head")
    >>> a = g.add("linear", g.add("flatten", g.add("global_avgpool", x, name="aux.gap"), name="aux.flat"),
    ...           out_features=3, name="aux.fc")
    >>> g.set_outputs(logits, g.add("auxiliary", a, weight=0.4, name="aux")); _ = g.init_params(seed=0).validate()
    >>> auxiliary_outputs(g), auxiliary_head(g)
    ({1: 0.4}, ['aux.gap', 'aux.flat', 'aux.fc', 'aux'])
    >>> s = strip_training(g)
    >>> s.outputs, "dp" in s, "aux.fc" in s
    (('head',), False, False)
"""

from __future__ import annotations

import networkx as nx

from archir.graph import Graph
from archir.ops import get_op
from archir.ops.core import STRIPPED_BY

__all__ = ["strip_training", "auxiliary_outputs", "auxiliary_head", "has_training_ops", "STRIPPED_BY"]


def _stripped(g: Graph, n: str) -> bool:
    return get_op(g.nx.nodes[n]["op"], n).removed_by == STRIPPED_BY


def has_training_ops(g: Graph) -> bool:
    """True when ``g`` has a node that :func:`strip_training` removes (``drop_path``, ``auxiliary``)."""
    return any(_stripped(g, n) for n in g.nx.nodes)


def auxiliary_outputs(g: Graph) -> dict[int, float]:
    """Output index -> loss weight of every auxiliary output of ``g`` (empty when it has none).

    Example:
        >>> auxiliary_outputs(g)       # g.set_outputs(logits, aux) with aux = auxiliary(weight=0.4)  # doctest: +SKIP
        {1: 0.4}
    """
    out = {}
    for k, o in enumerate(g.outputs):
        d = g.nx.nodes[o]
        if get_op(d["op"], o).auxiliary_output:
            out[k] = float(d["attrs"]["weight"])
    return out


def auxiliary_head(g: Graph) -> list[str]:
    """The nodes only auxiliary outputs need, in topological order: the auxiliary nodes and their heads.

    A node is in the head when some auxiliary output depends on it and no other output does
    (nodes hanging off the head that no output reads go with it). Graph inputs never are.
    """
    aux = {g.outputs[k] for k in auxiliary_outputs(g)}
    if not aux:
        return []
    main = [o for o in g.outputs if o not in aux]
    keep: set[str] = set(main)
    for o in main:
        keep |= nx.ancestors(g.nx, o)
    head: set[str] = set()
    for a in aux:
        head |= ({a} | nx.ancestors(g.nx, a)) - keep
    head -= set(g.inputs)
    for n in list(head):
        head |= nx.descendants(g.nx, n)  # dead nodes reading the head (not needed by the main outputs)
    return [n for n in g.topo_order() if n in head]


def strip_training(g: Graph) -> Graph:
    """The inference network of ``g``: a copy without its training-time constructs.

    - every ``drop_path`` is bypassed (its consumers read its input; one that is a graph output
      becomes an ``identity`` of the same id, so output names stay);
    - every auxiliary output is removed from the outputs, with the nodes only it needs
      (:func:`auxiliary_head`); the main outputs keep their order.

    ``g.meta``, the graph name and the graph inputs are kept (an input that only the head read
    stays, unused). Weights are not needed; they are shared with ``g`` (arrays are read-only).
    A graph with none of these constructs comes back as an equal copy. In eval mode the stripped
    graph computes the main outputs of ``g`` exactly (drop-path is the identity there).

    Args:
        g: a valid graph (not changed).

    Returns:
        A new graph, validated without weights.

    Raises:
        IRError: ``g`` is invalid.

    Example:
        >>> archir.strip_training(g).outputs          # g.set_outputs(logits, aux)   # doctest: +SKIP
        ('logits',)
    """
    g.validate(weights=False)
    out = g.copy()
    if not has_training_ops(out):
        return out
    head = auxiliary_head(out)
    if head:
        gone = set(head)
        out.set_outputs(*[o for o in out.outputs if o not in gone])
        for n in reversed(head):  # consumers first: every user of a head node is in the head
            out.remove(n)
    outputs = set(out.outputs)
    for n in [n for n in out.topo_order() if _stripped(out, n)]:
        (src,) = out.inputs_of(n)
        if n in outputs:
            d = out.nx.nodes[n]
            d["op"], d["attrs"] = "identity", get_op("identity").normalize_attrs({}, node=n)
            continue
        out.replace_uses(n, src)
        out.remove(n)
    return out.validate(weights=False)
