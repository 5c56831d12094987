"""The ``Space`` protocol shared by every search space, ``get_space``, and graph helpers.

A space turns *decisions* -- a plain JSON-able dict (str keys; int/str/list values) -- into
graphs. Decisions returned by ``sample``/``mutate``/``decode`` are always in canonical form,
so two decisions that mean the same network compare equal and serialise identically.

- ``sample(rng)`` / ``mutate(d, rng)``: random decisions, and one small change to them
  (every random draw takes an explicit ``numpy.random.Generator``).
- ``encode(d)`` / ``decode(obj)``: decisions <-> a canonical dict with sorted keys; both check
  the input and raise :class:`DecisionError` (a ``ValueError``) saying what, where and how.
- ``build(d, seed=, cells=, channels=)``: a plain validated graph with fresh weights.
- ``supernet(seed=)``: a graph with ``choice`` nodes (train it with
  ``archir.lower.to_fx(g, choice_mode=...)``); ``supernet_decisions(d)`` gives the
  ``archir.derive`` decisions for ``d``, and ``derive(supernet, d)`` = ``simplify(archir.derive(...))``
  has the same structure as ``build(d)`` (and the supernet's trained weights).
- ``describe(d)``: one short line for progress displays and the gallery.

Example:
    >>> import numpy as np
    >>> from search.spaces import get_space
    >>> space = get_space("chain", input_shape=(1, 8, 8), num_classes=10)
    >>> d = space.sample(np.random.default_rng(0))
    >>> g = space.build(d, seed=0)
    >>> g.structural_hash() == space.derive(space.supernet(widths=space.widths(d)), d).structural_hash()
    True
"""

from __future__ import annotations

import abc
import json
from typing import Any, Mapping

import networkx as nx
import numpy as np

import archir
from archir import Graph
from archir.errors import ArchirError

__all__ = ["Space", "DecisionError", "SpaceError", "get_space", "space_names", "simplify", "check_rng"]


class DecisionError(ArchirError, ValueError):
    """Decisions that do not fit a space.

    Args:
        message: what is wrong.
        where: the place in the decisions (``"normal[3]"``, ``"layers[2].kernel"``); a mapping
            is taken as :class:`archir.ArchirError`'s ``where`` (its ``decision`` key is the place).
        hint: how to mend it.

    Attributes:
        decision: the place in the decisions (``where["decision"]``), or None.
        message, where, hint: as for :class:`archir.ArchirError`.
    """

    def __init__(self, message: str, *, where: str | Mapping[str, Any] | None = None, hint: str | None = None,
                 **places: Any) -> None:
        if where is not None and not isinstance(where, Mapping):
            where = {"decision": str(where)}
        super().__init__(message, where=where, hint=hint, **places)

    decision = property(lambda self: self._get("decision"), lambda self, v: self._set("decision", v))

    def _place(self) -> str:
        d = self._get("decision")
        return super()._place() + (f"decisions {d}: " if d is not None else "decisions: ")


class SpaceError(ArchirError, ValueError):
    """A search space cannot be made as asked: an unknown name, an option it does not take, a bad start graph.

    Args:
        message: what is wrong.
        hint: how to fix it (one line).
        where: places, as for :class:`archir.ArchirError` (``file=`` for a start graph).
    """

    def __init__(self, message: str, hint: str | None = None, **where: Any) -> None:
        super().__init__(message, hint=hint, **where)


def check_rng(rng: Any) -> np.random.Generator:
    """``rng`` itself if it is a ``numpy.random.Generator``; a ``TypeError`` otherwise (no hidden seeds)."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}; "
                        "make one with numpy.random.default_rng(seed)")
    return rng


def _check_shape(input_shape: Any, num_classes: Any) -> tuple[tuple[int, int, int], int]:
    try:
        shape = tuple(int(v) for v in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) < 1 or any(isinstance(v, bool) for v in input_shape):
        raise SpaceError(f"input_shape must be (C, H, W) of positive ints, got {input_shape!r}",
                         hint="pass the dataset's input_shape, e.g. (1, 8, 8)")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise SpaceError(f"num_classes must be an int >= 2, got {num_classes!r}",
                         hint="pass the dataset's num_classes")
    return shape, int(num_classes)  # type: ignore[return-value]


class Space(abc.ABC):
    """A search space: decisions <-> graphs. See the module docstring for the protocol.

    Args:
        input_shape: ``(C, H, W)`` of one input (batch excluded).
        num_classes: outputs of the linear head.
    """

    name: str = ""

    def __init__(self, input_shape=(1, 8, 8), num_classes: int = 10) -> None:
        self.input_shape, self.num_classes = _check_shape(input_shape, num_classes)
        #: decisions an ask/tell strategy proposes first (``--start-genotype``); empty by default
        self.seeds: list[dict] = []

    # ---------------------------------------------------------------- to implement

    @abc.abstractmethod
    def sample(self, rng: np.random.Generator) -> dict:
        """Uniformly random canonical decisions drawn from ``rng``."""

    @abc.abstractmethod
    def mutate(self, decisions: Mapping, rng: np.random.Generator) -> dict:
        """Canonical decisions that differ from ``decisions`` by one small change (never equal to it)."""

    @abc.abstractmethod
    def decode(self, obj: Any) -> dict:
        """Check ``obj`` (e.g. from JSON) and return it as canonical decisions; ``DecisionError`` if it does not fit."""

    @abc.abstractmethod
    def build(self, decisions: Mapping, seed: int = 0, cells: int | None = None,
              channels: int | None = None) -> Graph:
        """A plain validated graph for ``decisions`` with weights initialised from ``seed``."""

    @abc.abstractmethod
    def supernet(self, seed: int = 0) -> Graph:
        """A validated graph with ``choice`` nodes covering the space (weights from ``seed``)."""

    @abc.abstractmethod
    def supernet_decisions(self, decisions: Mapping, supernet: Graph | None = None) -> dict[str, str]:
        """``archir.derive`` / ``to_fx(choice_mode="fixed")`` decisions (key -> candidate name) that select
        ``decisions``; with ``supernet``, only the keys it has (e.g. no reduction cells in a 2-cell DARTS net)."""

    @abc.abstractmethod
    def describe(self, decisions: Mapping) -> str:
        """One short human-readable line."""

    # ---------------------------------------------------------------- categorical view (controllers, priors)

    def variables(self) -> list[tuple[str, int]]:
        """The space as a fixed sequence of categorical variables ``(name, number of options)``.

        Controllers (NAS-RL, ENAS), priors (PARSEC) and surrogates (PNAS) work on this view:
        every point of the space is one list of option indices (:meth:`to_choices`) and every
        such list is a point (:meth:`from_choices`).
        """
        raise NotImplementedError(f"{type(self).__name__} has no categorical view")

    def to_choices(self, decisions: Mapping) -> list[int]:
        """``decisions`` as one option index per :meth:`variables` entry."""
        raise NotImplementedError(f"{type(self).__name__} has no categorical view")

    def from_choices(self, choices) -> dict:
        """Canonical decisions from one option index per :meth:`variables` entry (``DecisionError`` if out of range)."""
        raise NotImplementedError(f"{type(self).__name__} has no categorical view")

    def _check_choices(self, choices) -> list[int]:
        names = self.variables()
        try:
            out = [int(c) for c in choices]
        except (TypeError, ValueError):
            raise DecisionError(f"choices must be a list of ints, got {choices!r:.80}") from None
        if len(out) != len(names):
            raise DecisionError(f"expected {len(names)} choices (one per variable), got {len(out)}",
                                hint="see space.variables()")
        for (name, n), c in zip(names, out):
            if not 0 <= c < n:
                raise DecisionError(f"choice {c} is out of range 0..{n - 1}", where=name)
        return out

    # ---------------------------------------------------------------- what drivers ask of a space

    #: the size options :meth:`supernet` takes besides ``seed`` (``("cells", "channels")`` for darts)
    supernet_sizes: tuple[str, ...] = ()
    #: PARSEC's default view: ``"space"`` when :meth:`variables` are the architecture's own decisions and
    #: a prior over them is the natural one (darts: inputs and ops per node), else ``"supernet"`` (a
    #: prior over the supernet's choice nodes)
    prior_view: str = "supernet"

    def progressive_plan(self) -> tuple[tuple[tuple[int, ...], ...], tuple[int, ...], str] | None:
        """PNAS' stages over this space, or None for the default (one variable per stage, filler option 0).

        Returns ``(stages, filler, unit)``: the :meth:`variables` indices decided per stage, the option an
        undecided variable holds (so a partial architecture is a real member of the space), and the
        name of a stage's unit (``"node"``, ``"layer"``) for the progress display and the ``op``.
        """
        return None

    def decisions_from_probs(self, supernet: Graph, probs: Mapping[str, Any], *, drop_zero: bool = False) -> dict:
        """The decisions a one-shot driver derives from per-decision probabilities of ``supernet`` (key -> (K,)
        array); ``drop_zero``: SNAS's argmax child, where ``none`` deletes an edge."""
        raise NotImplementedError(f"{type(self).__name__} has no supernet derivation")

    def controller_variables(self, supernet: Graph) -> tuple[dict[int, int], list[tuple[str, int]]]:
        """What a controller over ``supernet`` samples (ENAS): ``(fixed, variables)``, the :meth:`variables`
        indices the supernet fixes (index -> option) and the free variables with the number of options
        the supernet offers for each. Default: nothing fixed, every variable as :meth:`variables` says."""
        return {}, list(self.variables())

    # ---------------------------------------------------------------- shared

    def encode(self, decisions: Mapping) -> dict:
        """The canonical JSON-able dict of ``decisions`` (checked; keys sorted at every level)."""
        return json.loads(json.dumps(self.decode(decisions), sort_keys=True))

    def derive(self, supernet: Graph, decisions: Mapping) -> Graph:
        """``decisions`` cut out of a (trained) supernet: same structure as ``build(decisions)``, with the
        supernet's weights (weight sharing). Unselected edges (``none``) and identities are dropped."""
        return simplify(archir.derive(supernet, self.supernet_decisions(decisions, supernet))).validate()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(input_shape={self.input_shape}, num_classes={self.num_classes})"


# --------------------------------------------------------------------------- graph helpers


def simplify(g: Graph) -> Graph:
    """Drop what a derived supernet carries but a built network does not (in place; returns ``g``).

    - ``add(a, zero(..))`` -> ``a``: an unselected edge (DARTS ``none``) or a skipped layer
      (``zero`` and ``add`` have the same output shape, so ``a`` fits every consumer);
    - ``identity`` nodes are bypassed (a stride-1 ``skip_connect``);
    - nodes that no output depends on are removed (a cell input no selected edge reads).

    The function is unchanged: ``zero`` adds nothing and ``identity`` passes its input on.
    """
    changed = True
    while changed:
        changed = False
        for n in g.topo_order():
            node = g.node(n)
            if node.op == "identity":
                (src,) = g.inputs_of(n)
                g.replace_uses(n, src)
                changed = True
            elif node.op == "add":
                a, b = g.inputs_of(n)
                keep = b if g.node(a).op == "zero" else a if g.node(b).op == "zero" else None
                if keep is not None:  # zero + zero -> that zero, which a later add drops in turn
                    g.replace_uses(n, keep)
                    changed = True
        live = set(g.outputs)
        for o in g.outputs:
            live |= nx.ancestors(g.nx, o)
        for n in reversed(g.topo_order()):
            if n not in live and g.node(n).op != "input":
                g.remove(n)
                changed = True
    return g


# --------------------------------------------------------------------------- registry


def space_names() -> list[str]:
    """The names ``get_space`` knows."""
    return sorted(_spaces())


_REGISTRY: dict[str, type] = {}


def register_space(cls: type) -> type:
    """Class decorator: make a :class:`Space` subclass known to :func:`get_space` by its ``name``.

    Raises:
        SpaceError: the class has no name, or another class is registered under it.
    """
    name = getattr(cls, "name", "")
    if not name or not isinstance(name, str):
        raise SpaceError(f"space class {cls.__qualname__} has no name", hint="set the class attribute name = '...'")
    if _REGISTRY.get(name, cls) is not cls:
        raise SpaceError(f"a search space named {name!r} is registered already ({_REGISTRY[name].__qualname__})",
                         hint="give the new space another name")
    _REGISTRY[name] = cls
    return cls


def _spaces() -> dict[str, type]:
    import search.spaces.chain  # noqa: F401  (the built-in spaces register themselves when imported)
    import search.spaces.darts  # noqa: F401
    import search.spaces.nb201  # noqa: F401
    import search.spaces.start  # noqa: F401

    return dict(_REGISTRY)


def get_space(name: str, **kwargs: Any) -> Space:
    """The space called ``name`` (``"darts"``, ``"chain"``, ``"nb201"``, ``"start"`` or one added with
    :func:`register_space`), built with ``kwargs``.

    Args:
        name: the space name.
        **kwargs: ``input_shape``, ``num_classes`` and the space's own options
            (``cells``, ``channels`` for darts and nb201; ``layers``, ``stem``, ... for chain).

    Raises:
        SpaceError: unknown name, or an option the space does not take (a ``ValueError``).
        ValueError: an option value the space rejects.

    Example:
        >>> get_space("darts", input_shape=(1, 8, 8), num_classes=10).name
        'darts'
    """
    spaces = _spaces()
    if name not in spaces:
        raise SpaceError(f"unknown search space {name!r}", hint=f"use one of {sorted(spaces)}")
    try:
        return spaces[name](**kwargs)
    except TypeError as e:  # an option the space does not take
        import inspect

        opts = [p for p in inspect.signature(spaces[name]).parameters if p not in ("input_shape", "num_classes")]
        raise SpaceError(f"search space {name!r}: {e}",
                         hint=f"its options are {', '.join(f'{p}=...' for p in opts) or 'none'} "
                              f"(--space-opt KEY=VALUE; see help(search.spaces.{spaces[name].__name__}))") from None
