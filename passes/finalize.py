"""``finalize``: remove the training-only ``stop_gradient`` / ``stop_forward`` ops (Petridish).

It first strips the other training-time constructs with :func:`archir.strip_training`
(``drop_path`` bypassed, auxiliary outputs and their heads removed), so its result is the
inference network that ``archir.lower.to_onnx`` exports.

Petridish trains candidate ops beside a parent network without disturbing it: a candidate reads
``stop_gradient(x)`` (forward ``x``, no gradient back into the parent) and joins the parent
through ``add(y, stop_forward(c))`` (``stop_forward(c) = c - c.detach()``: forward 0, gradient of
``c``). Once the candidates are chosen, ``finalize`` turns the graph into a plain network that
``archir.lower.to_onnx`` accepts:

- ``stop_gradient(x)`` -> ``x``: the forward value is the same, so this part preserves the
  function exactly (in every mode).
- ``stop_forward(c)``, ``mode="join"`` (default, Petridish's "grow" step): -> ``c``. The
  candidates now *add* to the parent's output: ``y' = y + c``. The function changes by ``c``
  (that is the point: the grown model), so the pass promises no preservation in general. It is
  exactly preserving when ``c`` is zero (e.g. join weights of zero).
- ``stop_forward(c)``, ``mode="drop"``: -> nothing. ``add(y, stop_forward(c))`` becomes ``y``
  (``y + 0 = y``), any other consumer reads a ``zero`` node, and the candidate ops no output
  depends on any more are removed. The forward value of ``stop_forward`` is exactly zero, so
  this mode preserves the function exactly (eval and train mode): the parent comes back.

Example:
    >>> import archir
    >>> g = archir.Graph("pd")
    >>> x = g.input("x", shape=(2, 4, 4))
    >>> y = g.add("relu", x, name="y")
    >>> c = g.add("conv2d", g.add("stop_gradient", y, name="sg"), out_channels=2, kernel_size=1, name="cand")
    >>> out = g.add("add", y, g.add("stop_forward", c, name="sf"), name="join")
    >>> g.set_outputs(g.add("global_avgpool", out, name="gap")); _ = g.init_params(seed=0).validate()
    >>> sorted(n.op for n in finalize(g).nodes() if n.op.startswith("stop_"))
    []
    >>> "cand" in finalize(g, mode="drop")
    False
"""

from __future__ import annotations

from archir import Graph, strip_training
from archir.ops import get_op

from passes._rewrite import remove_dead
from passes.infra import PreconditionError, graph_pass

__all__ = ["finalize", "FINALIZE_MODES", "stop_ops"]

FINALIZE_MODES = ("join", "drop")


def stop_ops(g: Graph) -> list[str]:
    """The ids of the nodes ``finalize`` removes (``stop_gradient``, ``stop_forward``: the training-only ops
    whose ``OpDef.removed_by`` is ``"finalize"``), in topological order."""
    return [n for n in g.topo_order() if get_op(g.node(n).op, n).removed_by == "finalize"]


@graph_pass(preserves=None)
def finalize(g: Graph, mode: str = "join") -> Graph:
    """A copy of ``g`` without ``stop_gradient`` / ``stop_forward`` nodes (see the module docstring), and
    without ``drop_path`` or auxiliary outputs (``archir.strip_training``, applied first).

    Args:
        g: the graph (not changed).
        mode: ``"join"``: a ``stop_forward`` is bypassed, so what it guarded joins the forward
            pass (Petridish's grown model; changes the function by the candidates' output);
            ``"drop"``: a ``stop_forward`` is replaced by zero and what only fed it is removed
            (function-preserving exactly).

    Returns:
        A new validated graph with no stop op, no ``drop_path`` and only the main outputs. A
        graph without any of these comes back as an equal copy.

    Raises:
        PreconditionError: unknown ``mode``; or a stop op is a graph output (outputs are the
            interface: their ids must stay).

    Example:
        >>> g2 = finalize(g)                     # doctest: +SKIP
        >>> archir.lower.to_onnx(g2)             # accepted now   # doctest: +SKIP
    """
    if mode not in FINALIZE_MODES:
        raise PreconditionError(f"unknown mode {mode!r}", hint=f"use one of {list(FINALIZE_MODES)}")
    out = strip_training(g)
    outputs = set(out.outputs)
    for n in stop_ops(out):
        if n in outputs:
            raise PreconditionError(f"node {n!r} ({out.node(n).op}) is a graph output",
                                    hint="a stop op guards a path inside the network; add a consumer after it "
                                         "or remove it by hand")
    for n in stop_ops(out):
        op = out.node(n).op
        (src,) = out.inputs_of(n)
        if op == "stop_gradient" or mode == "join":
            out.replace_uses(n, src)
            out.remove(n)
            continue
        # drop: y + stop_forward(c) -> y; any other consumer reads zeros of the same shape
        for v, port in list(out.users_of(n)):
            if out.node(v).op == "add":
                ins = out.inputs_of(v)
                other = ins[1 - port]
                if other != n and v not in outputs:
                    out.replace_uses(v, other)
                    out.remove(v)
                    continue
            z = out.add("zero", src, name=_fresh(out, f"{n}.zero"))
            out.set_input(v, port, z)
        out.remove(n)
    remove_dead(out)
    return out.validate()


def _fresh(g: Graph, base: str) -> str:
    k, cand = 1, base
    while cand in g:
        k += 1
        cand = f"{base}_{k}"
    return cand
