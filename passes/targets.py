"""The morphism registry and the helpers search drivers use to pick legal moves.

``MORPHISMS`` maps a name to ``(fn, targets_fn)``: ``fn(g, **kwargs) -> Graph`` is a
``@graph_pass(preserves="function")`` morphism and ``targets_fn(g) -> list[dict]`` lists the
kwargs of every legal call on ``g``. ``register_morphism`` adds one. Registered here:
``deepen``, ``insert_bn``, ``enlarge_kernel``, ``add_skip`` and ``widen`` (its targets double a layer;
``random_morphism`` draws the width, up to a doubling: :func:`passes.widen.widen_draw`).

A driver asks ``legal_targets(g, "deepen")`` for the moves of one morphism, or lets
``random_morphism(g, rng)`` pick a morphism and a target uniformly (the morphism first, so a
morphism with many targets, such as ``add_skip``, does not crowd out the others), optionally
within a size bound (``max_params``; ``max_macs`` with a MAC counter ``macs_fn``, which a search
driver takes from ``costmodels``: ``passes`` imports ``archir`` only).
"""

from __future__ import annotations

import inspect
from typing import Callable, Iterable

import numpy as np

from archir import Graph

from passes._util import fmt_call
from passes.deepen import deepen, deepen_targets
from passes.enlarge_kernel import enlarge_kernel, enlarge_kernel_targets
from passes.infra import PreconditionError
from passes.insert_bn import insert_bn, insert_bn_targets
from passes.skip import add_skip, skip_targets
from passes.widen import widen, widen_draw, widen_targets

__all__ = ["MORPHISMS", "register_morphism", "legal_targets", "random_morphism", "morphism_names"]

#: name -> (morphism, targets function)
MORPHISMS: dict[str, tuple[Callable[..., Graph], Callable[[Graph], list[dict]]]] = {}
#: name -> draw(g, target, rng) -> kwargs: how random_morphism refines a listed target (widen: its width)
_DRAWS: dict[str, Callable[[Graph, dict, np.random.Generator], dict]] = {}


def register_morphism(name: str, fn: Callable[..., Graph], targets_fn: Callable[[Graph], list[dict]], *,
                      replace: bool = False,
                      draw: Callable[[Graph, dict, np.random.Generator], dict] | None = None) -> None:
    """Register a morphism under ``name`` for ``legal_targets``/``random_morphism``.

    Args:
        name: the registry key (``"widen"``).
        fn: ``fn(g, **kwargs) -> Graph``, a function-preserving pass (``@graph_pass(preserves="function")``);
            a ``seed`` keyword, if it takes one, is filled in by ``random_morphism``.
        targets_fn: ``targets_fn(g) -> list[dict]``, the kwargs of every legal call on ``g``.
        replace: allow replacing an existing entry.
        draw: ``draw(g, target, rng) -> kwargs``, optional: ``random_morphism`` passes each drawn target
            through it to draw what the target list leaves open (``widen``: the new width,
            :func:`passes.widen.widen_draw`). ``legal_targets`` lists the targets as they are.

    Raises:
        ValueError: ``name`` is taken (and ``replace`` is false), or ``fn``/``targets_fn``/``draw`` is not callable.

    Example:
        >>> from passes.widen import widen, widen_draw, widen_targets               # doctest: +SKIP
        >>> passes.register_morphism("widen", widen, widen_targets)     # doctest: +SKIP
    """
    if not callable(fn) or not callable(targets_fn) or (draw is not None and not callable(draw)):
        raise ValueError(f"register_morphism({name!r}): fn, targets_fn and draw (if given) must be callable")
    if name in MORPHISMS and not replace and (MORPHISMS[name] != (fn, targets_fn) or _DRAWS.get(name) is not draw):
        raise ValueError(f"morphism {name!r} is already registered; pass replace=True to replace it")
    MORPHISMS[name] = (fn, targets_fn)
    if draw is None:
        _DRAWS.pop(name, None)
    else:
        _DRAWS[name] = draw


def morphism_names() -> list[str]:
    """The registered morphism names, in registration order."""
    return list(MORPHISMS)


def _lookup(morphism) -> tuple[str, Callable, Callable]:
    if isinstance(morphism, str):
        if morphism not in MORPHISMS:
            raise PreconditionError(f"unknown morphism {morphism!r}",
                                    hint=f"registered morphisms: {morphism_names()} (add one with register_morphism)")
        fn, tf = MORPHISMS[morphism]
        return morphism, fn, tf
    for name, (fn, tf) in MORPHISMS.items():
        if fn is morphism:
            return name, fn, tf
    raise PreconditionError(f"{getattr(morphism, '__name__', morphism)!r} is not a registered morphism",
                            hint=f"registered morphisms: {morphism_names()} (add one with register_morphism)")


def legal_targets(g: Graph, morphism) -> list[dict]:
    """The kwargs of every legal call of ``morphism`` (a registered name or function) on ``g``.

    Each dict makes a call ``fn(g, **kwargs)`` that applies (a seed is not included).

    Raises:
        PreconditionError: ``morphism`` is not registered.

    Example:
        >>> passes.legal_targets(g, "enlarge_kernel")[0]        # doctest: +SKIP
        {'node': 'l0.conv', 'kernel_size': 5}
    """
    _, _, tf = _lookup(morphism)
    return list(tf(g))


def _takes_seed(fn: Callable) -> bool:
    try:
        return "seed" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _bound_check(max_params, max_macs, macs_fn) -> list[tuple[str, float, Callable[[Graph], float]]]:
    """The bounds of a ``random_morphism`` call as ``(name, limit, measure)``; bad arguments raise ValueError."""
    bounds = []
    for key, v in (("max_params", max_params), ("max_macs", max_macs)):
        if v is None:
            continue
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)) \
                or not np.isfinite(v) or v <= 0:
            raise ValueError(f"random_morphism: {key} must be a positive number or None, got {v!r}")
    if max_macs is not None and not callable(macs_fn):
        raise ValueError("random_morphism: max_macs needs macs_fn, a callable Graph -> MAC count (passes does not "
                         "count MACs itself); e.g. macs_fn=lambda g: costmodels.count(g).macs")
    if max_params is not None:
        bounds.append(("max_params", float(max_params), lambda h: float(h.num_params())))
    if max_macs is not None:
        bounds.append(("max_macs", float(max_macs), lambda h: float(macs_fn(h))))
    return bounds


def _over(g: Graph, bounds) -> str | None:
    """Why ``g`` is past a bound (``"2,340 params > max_params=2,000"``), or None."""
    for key, limit, measure in bounds:
        v = measure(g)
        if v > limit:
            return f"{v:,.0f} {key[4:]} > {key}={limit:,.0f}"
    return None


def random_morphism(g: Graph, rng: np.random.Generator | int, morphisms: Iterable[str] | None = None,
                    *, max_tries: int = 8, max_params: float | None = None, max_macs: float | None = None,
                    macs_fn: Callable[[Graph], float] | None = None) -> tuple[Graph, str]:
    """Apply one random legal morphism to ``g``, within optional size bounds.

    A morphism is drawn uniformly among ``morphisms`` (default: all registered) that have a
    legal target on ``g``, then a target uniformly among its legal targets, refined by the
    morphism's draw function if it has one (``widen`` draws its new width: :func:`passes.widen.widen_draw`),
    and a seed for the morphism from ``rng``. Only the targets of the morphisms tried are listed.

    With a bound (``max_params``, ``max_macs``), a move whose result is past it is refused and
    another is drawn: up to ``max_tries`` of the chosen morphism, then the next morphism in the
    random order, so a morphism that cannot fit (a deepening of a wide layer) does not block one
    that can (a narrow widening, a BN). The bounds are on the result: a search space's limit.

    Args:
        g: the graph (not changed).
        rng: a ``numpy.random.Generator`` (or an int seed); the same state gives the same move.
        morphisms: names to choose from.
        max_tries: how many drawn moves of one morphism may be refused before giving up on it. A move
            refused by the morphism itself (``PreconditionError``) means a targets function listed an
            illegal target, a bug in it: that ends the call (the reasons are listed).
        max_params: the most trainable parameters (``Graph.num_params``) the result may have, or None.
        max_macs: the most MACs the result may have (as ``macs_fn`` counts them), or None.
        macs_fn: ``Graph -> MACs``, required with ``max_macs`` (``passes`` does not depend on
            ``costmodels``; search drivers pass ``lambda g: costmodels.count(g).macs``).

    Returns:
        ``(new_graph, description)``, the description a call such as
        ``"deepen(after='l0.relu', kernel_size=3, with_bn=True, activation='relu', seed=123)"``.

    Raises:
        PreconditionError: no morphism has a legal target on ``g``; every tried move was past a bound
            (the message names the bound, each move and its size, and how to mend it); or a listed move
            was refused (the reasons are listed).
        ValueError: a bound is not a positive number, or ``max_macs`` without ``macs_fn``.

    Example:
        >>> import archir.samples as S
        >>> g = S.chain()
        >>> g2, desc = random_morphism(g, 0, max_params=g.num_params() + 600)   # doctest: +SKIP
        >>> g2.num_params() <= g.num_params() + 600                             # doctest: +SKIP
        True
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    names = list(morphisms) if morphisms is not None else morphism_names()
    for name in names:
        _lookup(name)
    bounds = _bound_check(max_params, max_macs, macs_fn)
    reasons: list[str] = []   # moves the morphism refused (a targets-function bug)
    too_big: dict[str, str] = {}  # move (without its seed) -> why it is past a bound
    any_targets = False
    # a random order of the morphisms, the first with a legal target wins: uniform among those
    # that have one, and the (costly) targets of the others are not listed; with bounds, a morphism
    # whose moves are all too big gives way to the next
    for k in rng.permutation(len(names)):
        name = names[int(k)]
        fn, tf = MORPHISMS[name]
        ts = tf(g)
        if not ts:
            continue
        any_targets = True
        draw = _DRAWS.get(name)
        for _ in range(max_tries):
            kwargs = dict(ts[int(rng.integers(len(ts)))])
            if draw is not None:
                kwargs = dict(draw(g, kwargs, rng))
            if _takes_seed(fn):
                kwargs["seed"] = int(rng.integers(2 ** 31 - 1))
            desc = fmt_call(name, kwargs)
            move = fmt_call(name, {k: v for k, v in kwargs.items() if k != "seed"})  # a seed does not change sizes
            if move in too_big:  # drawn again: known to be past the bound
                continue
            try:
                g2 = fn(g, **kwargs)
            except PreconditionError as e:
                reasons.append(f"{desc}: {e}")
                continue
            why = _over(g2, bounds)
            if why is None:
                return g2, desc
            too_big[move] = why
        if reasons:
            raise PreconditionError(f"{max_tries} random moves were all refused:\n  "
                                    + "\n  ".join(reasons + [f"{m}: {w}" for m, w in too_big.items()]),
                                    pass_name="random_morphism",
                                    hint="a targets function listed an illegal target; that is a bug in it")
    if not any_targets:
        raise PreconditionError(f"no morphism among {names} has a legal target in graph {g.name!r}",
                                pass_name="random_morphism")
    now = "; ".join(f"{key[4:]} {measure(g):,.0f}" for key, _, measure in bounds)
    limits = ", ".join(f"{key}={limit:,.0f}" for key, limit, _ in bounds)
    shown: list[str] = []
    for mname in dict.fromkeys(m.split("(")[0] for m in too_big):  # up to 3 moves of each morphism
        mine = [f"{m}: {w}" for m, w in too_big.items() if m.split("(")[0] == mname]
        shown += mine[:3] + ([f"... and {len(mine) - 3} more {mname} moves"] if len(mine) > 3 else [])
    raise PreconditionError(
        f"every move tried on graph {g.name!r} ({now}) is past the bound {limits}: {len(too_big)} distinct "
        f"moves of {sorted({m.split('(')[0] for m in too_big})} refused:\n  " + "\n  ".join(shown),
        pass_name="random_morphism",
        hint="raise the bound (the start space's option: --space-opt max_params=N or max_macs=N), let more "
             "moves be tried (max_tries), or start from a smaller network")


for _name, _fn, _tf in (("deepen", deepen, deepen_targets), ("insert_bn", insert_bn, insert_bn_targets),
                        ("enlarge_kernel", enlarge_kernel, enlarge_kernel_targets),
                        ("add_skip", add_skip, skip_targets)):
    register_morphism(_name, _fn, _tf)
register_morphism("widen", widen, widen_targets, draw=widen_draw)
