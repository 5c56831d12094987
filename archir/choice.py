"""``derive``: turn a supernet (a graph with ``choice`` nodes) into a plain graph.

Each choice node is replaced by the steps of its chosen candidate (a chain, or a small DAG when
a step lists its ``inputs``). The chosen candidate's
parameters are copied (weight sharing: a one-shot result can be fine-tuned or exported
without retraining from scratch). The last op of the chain keeps the choice node's id, so
consumers, outputs and names stay put; earlier ops are named ``<id>.<candidate>.<step>``.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from archir.errors import IRError
from archir.graph import Graph, arch_key
from archir.ops import step_inputs
from archir.training import strip_training

__all__ = ["derive", "decision_keys"]


def decision_keys(graph: Graph) -> dict[str, list[str]]:
    """Decision key -> candidate names, for every decision in a supernet (insertion order)."""
    out: dict[str, list[str]] = {}
    for n in graph.nodes("choice"):
        out.setdefault(arch_key(n.id, n.attrs), [c["name"] for c in n.attrs["candidates"]])
    return out


def derive(graph: Graph, decisions: Mapping[str, int | str] | None = None) -> Graph:
    """A plain graph with every choice node replaced by its chosen candidate.

    Args:
        graph: a supernet with initialised weights.
        decisions: decision key (the ``tie`` attr, or the node id) -> candidate index or name.
            ``None`` takes the argmax of the architecture logits for every decision (the DARTS
            derivation). A partial mapping is an error: say every decision or none.

    Returns:
        A new graph with no choice nodes, and stripped of training-time constructs
        (:func:`archir.strip_training`: no ``drop_path``, no auxiliary outputs); ``graph`` is untouched.

    Raises:
        IRError: a decision is missing, unknown, or names no candidate.

    Example:
        >>> plain = archir.derive(supernet, {"normal.e0": "sep_conv_3x3"})   # doctest: +SKIP
    """
    graph.validate()
    keys = decision_keys(graph)
    if decisions is None:
        chosen = {k: int(np.argmax(graph.arch[k])) for k in keys}
    else:
        unknown = sorted(set(decisions) - set(keys))
        missing = sorted(set(keys) - set(decisions))
        if unknown or missing:
            raise IRError(f"decisions do not match the supernet: unknown {unknown}, missing {missing}",
                          rule="derive", hint=f"give one decision for each of {sorted(keys)}, or None for argmax")
        chosen = {}
        for k, d in decisions.items():
            names = keys[k]
            idx = names.index(d) if isinstance(d, str) and d in names else d
            if isinstance(idx, bool) or not isinstance(idx, (int, np.integer)) or not 0 <= idx < len(names):
                raise IRError(f"decision {k!r} = {d!r} is not a candidate", rule="derive",
                              hint=f"use an index 0..{len(names) - 1} or one of {names}")
            chosen[k] = int(idx)
    new = graph.copy()
    for node in graph.nodes("choice"):
        cand = node.attrs["candidates"][chosen[arch_key(node.id, node.attrs)]]
        (src,) = graph.inputs_of(node.id)
        ops = cand["ops"] or [{"op": "identity"}]
        users = new.users_of(node.id)
        new._g.remove_node(node.id)  # the chain's last op takes over its id, users and output slots
        made: list[str] = []
        for j, spec in enumerate(ops):
            attrs = {k: v for k, v in spec.items() if k not in ("op", "inputs")}
            name = node.id if j == len(ops) - 1 else f"{node.id}.{cand['name']}.{j}"
            h = new.add(spec["op"], *[src if i < 0 else made[i] for i in step_inputs(spec, j)], name=name, **attrs)
            made.append(h)
            pre = f"{cand['name']}.{j}."
            new.set_params(h, **{n[len(pre):]: a for n, a in node.params.items() if n.startswith(pre)})
            new.set_buffers(h, **{n[len(pre):]: a for n, a in node.buffers.items() if n.startswith(pre)})
        for v, p in users:
            new._g.add_edge(h, v, port=p)
    new.arch = {}
    new.meta = {**new.meta, "derived": {k: keys[k][i] for k, i in chosen.items()}}
    # the derived network is for fine-tuning and export: no drop_path, no auxiliary heads
    return strip_training(new.validate())

