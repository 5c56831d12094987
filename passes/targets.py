"""The morphism registry and the helpers search drivers use to pick legal moves.

``MORPHISMS`` maps a name to ``(fn, targets_fn)``: ``fn(g, **kwargs) -> Graph`` is a
``@graph_pass(preserves="function")`` morphism and ``targets_fn(g) -> list[dict]`` lists the
kwargs of every legal call on ``g``. ``register_morphism`` adds one. Registered here:
``deepen``, ``insert_bn``, ``enlarge_kernel``, ``add_skip`` and ``widen`` (doubling a layer).

A driver asks ``legal_targets(g, "deepen")`` for the moves of one morphism, or lets
``random_morphism(g, rng)`` pick a morphism and a target uniformly (the morphism first, so a
morphism with many targets, such as ``add_skip``, does not crowd out the others).
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
from passes.widen import widen, widen_targets

__all__ = ["MORPHISMS", "register_morphism", "legal_targets", "random_morphism", "morphism_names"]

#: name -> (morphism, targets function)
MORPHISMS: dict[str, tuple[Callable[..., Graph], Callable[[Graph], list[dict]]]] = {}


def register_morphism(name: str, fn: Callable[..., Graph], targets_fn: Callable[[Graph], list[dict]], *,
                      replace: bool = False) -> None:
    """Register a morphism under ``name`` for ``legal_targets``/``random_morphism``.

    Args:
        name: the registry key (``"widen"``).
        fn: ``fn(g, **kwargs) -> Graph``, a function-preserving pass (``@graph_pass(preserves="function")``);
            a ``seed`` keyword, if it takes one, is filled in by ``random_morphism``.
        targets_fn: ``targets_fn(g) -> list[dict]``, the kwargs of every legal call on ``g``.
        replace: allow replacing an existing entry.

    Raises:
        ValueError: ``name`` is taken (and ``replace`` is false), or ``fn``/``targets_fn`` is not callable.

    Example:
        >>> from passes.widen import widen, widen_targets               # doctest: +SKIP
        >>> passes.register_morphism("widen", widen, widen_targets)     # doctest: +SKIP
    """
    if not callable(fn) or not callable(targets_fn):
        raise ValueError(f"register_morphism({name!r}): fn and targets_fn must be callable")
    if name in MORPHISMS and not replace and MORPHISMS[name] != (fn, targets_fn):
        raise ValueError(f"morphism {name!r} is already registered; pass replace=True to replace it")
    MORPHISMS[name] = (fn, targets_fn)


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


def random_morphism(g: Graph, rng: np.random.Generator | int, morphisms: Iterable[str] | None = None,
                    *, max_tries: int = 8) -> tuple[Graph, str]:
    """Apply one random legal morphism to ``g``.

    A morphism is drawn uniformly among ``morphisms`` (default: all registered) that have a
    legal target on ``g``, then a target uniformly among its legal targets, and a seed for the
    morphism from ``rng``. Only the targets of the morphisms tried are listed.

    Args:
        g: the graph (not changed).
        rng: a ``numpy.random.Generator`` (or an int seed); the same state gives the same move.
        morphisms: names to choose from.
        max_tries: how many drawn targets of the chosen morphism may be refused (``PreconditionError``)
            before giving up; a refused listed target is a bug in a targets function, so this is a
            safety net.

    Returns:
        ``(new_graph, description)``, the description a call such as
        ``"deepen(after='l0.relu', kernel_size=3, with_bn=True, activation='relu', seed=123)"``.

    Raises:
        PreconditionError: no morphism has a legal target on ``g``, or every tried move was refused
            (the reasons are listed).
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    names = list(morphisms) if morphisms is not None else morphism_names()
    for name in names:
        _lookup(name)
    reasons: list[str] = []
    # a random order of the morphisms, the first with a legal target wins: uniform among those
    # that have one, and the (costly) targets of the others are not listed
    chosen = None
    for k in rng.permutation(len(names)):
        fn, tf = MORPHISMS[names[int(k)]]
        ts = tf(g)
        if ts:
            chosen = (names[int(k)], fn, ts)
            break
    if chosen is None:
        raise PreconditionError(f"no morphism among {names} has a legal target in graph {g.name!r}",
                                pass_name="random_morphism")
    name, fn, ts = chosen
    for _ in range(max_tries):
        kwargs = dict(ts[int(rng.integers(len(ts)))])
        if _takes_seed(fn):
            kwargs["seed"] = int(rng.integers(2 ** 31 - 1))
        desc = fmt_call(name, kwargs)
        try:
            return fn(g, **kwargs), desc
        except PreconditionError as e:
            reasons.append(f"{desc}: {e}")
    raise PreconditionError(f"{max_tries} random moves were all refused:\n  " + "\n  ".join(reasons),
                            pass_name="random_morphism",
                            hint="a targets function listed an illegal target; that is a bug in it")


for _name, _fn, _tf in (("deepen", deepen, deepen_targets), ("insert_bn", insert_bn, insert_bn_targets),
                        ("enlarge_kernel", enlarge_kernel, enlarge_kernel_targets),
                        ("add_skip", add_skip, skip_targets), ("widen", widen, widen_targets)):
    register_morphism(_name, _fn, _tf)
