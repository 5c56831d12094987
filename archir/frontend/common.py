"""What both frontends share: their errors, the list of unsupported nodes, readable node ids.

A frontend never guesses: a construct it cannot map exactly onto IR ops is recorded as an
:class:`Unsupported` entry, the import runs to the end so that *every* such node is found,
and then one :class:`UnsupportedModelError` lists them all (op or target, where it comes
from, and why).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from archir.errors import IRError

__all__ = ["FrontendError", "UnsupportedModelError", "UnsafeModelError", "Unsupported", "IdMaker"]


class FrontendError(IRError):
    """A model cannot be imported (it does not trace, does not run, or does not match after import)."""


class UnsafeModelError(FrontendError):
    """A model file is refused before it is read in full: unsafe external data, custom ops, size caps."""


@dataclass(frozen=True)
class Unsupported:
    """One node a frontend cannot map onto IR ops.

    Attributes:
        what: the op or call target (``"call_method view"``, ``"ONNX Transpose"``).
        where: where it comes from: module path and source line, or the ONNX node name.
        reason: why it is not supported.
    """

    what: str
    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.what} at {self.where}: {self.reason}"


class UnsupportedModelError(FrontendError):
    """One error listing every unsupported node of a model (``.unsupported``).

    The first line of the message names them all (so a one-line CLI report is complete);
    ``context`` has one line per node with the reason.
    """

    def __init__(self, model: str, items: list[Unsupported], *, hint: str | None = None) -> None:
        self.unsupported = list(items)
        kinds: dict[str, list[Unsupported]] = {}
        for u in items:
            kinds.setdefault(u.what, []).append(u)
        # the first line names every kind (a one-line CLI report is complete); context lists every node
        short = "; ".join(f"{what}" + (f" x{len(us)}" if len(us) > 1 else "") + f" (first at {us[0].where})"
                          for what, us in kinds.items())
        super().__init__(
            f"cannot import {model}: {len(items)} unsupported node(s): {short}",
            rule="unsupported",
            hint=hint or "rewrite these parts with supported layers (see docs/frontend_support.md), "
                         "or add the op to archir's registry",
            context="\n".join(f"  - {u}" for u in items),
        )


_BAD = re.compile(r"[^A-Za-z0-9_\-]")


def clean_id(text: str) -> str:
    """A readable IR id from a module path or ONNX name: each dot-separated part made legal."""
    parts = [_BAD.sub("_", p) for p in str(text).split(".") if p != ""]
    parts = ["_" + p if p.startswith("-") else p for p in parts]  # a part may not start with '-'

    return ".".join(parts) if parts else "node"


class IdMaker:
    """Hands out unique, readable node ids (``layer1.0.relu``, then ``layer1.0.relu_1`` ...)."""

    def __init__(self) -> None:
        self.taken: set[str] = set()

    def __call__(self, base: str) -> str:
        base = clean_id(base)
        name, k = base, 0
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name


class Skip(Exception):
    """Raised by a mapping rule of either frontend: this node is unsupported (the message is the reason)."""


def add_mapped(g, ids: IdMaker, nid: str, op: str, inputs, *, params=None, buffers=None, **attrs) -> str:
    """Add node ``nid`` (handed out by ``ids``) to ``g``, then its weights (numpy arrays).

    An IR refusal (bad attrs or input shapes) becomes :class:`Skip` naming the op, and ``nid``
    is handed back to ``ids`` so the next node may take it.
    """
    try:
        g.add(op, *inputs, name=nid, **attrs)
    except IRError as e:
        ids.taken.discard(nid)
        raise Skip(f"maps to {op} but {e.message}") from None
    if params:
        g.set_params(nid, **params)
    if buffers:
        g.set_buffers(nid, **buffers)
    return nid


def fuse_layernorm2d(g) -> int:
    """Rewrite ``permute(1, 2, 0) -> layernorm(last) -> permute(2, 0, 1)`` into ``layernorm(axis="channels")``
    in place (ConvNeXt's LayerNorm2d, traced or exported as permute / layer norm / permute back). The
    result is the same function, computed the same way (``archir.lower.modules.LayerNorm2d``), and
    passes see one layer norm over the channels, whose affine follows them. Returns the count fused."""
    fused = 0
    for ln in [n.id for n in g.nodes("layernorm")]:
        if g.node(ln).attrs["axis"] != "last":
            continue
        (p1,) = g.inputs_of(ln)
        users = g.users_of(ln)
        if g.node(p1).op != "permute" or g.node(p1).attrs["dims"] != [1, 2, 0] or len(users) != 1:
            continue
        p2 = users[0][0]
        if g.node(p2).op != "permute" or g.node(p2).attrs["dims"] != [2, 0, 1] or ln in g.outputs:
            continue
        (x,) = g.inputs_of(p1)
        g.set_input(ln, 0, x)
        g.set_attrs(ln, axis="channels")
        g.replace_uses(p2, ln)
        g.remove(p2)
        if not g.users_of(p1) and p1 not in g.outputs:
            g.remove(p1)
        fused += 1
    return fused
