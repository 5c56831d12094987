"""The ask/tell interface of search strategies and the strategy registry.

A strategy proposes candidates and learns from their results; it never trains anything
itself, so an executor can evaluate what it asks for in parallel::

    strat = get_strategy("evolution", space, seed=0, population=10, sample=3)
    specs = strat.ask(4)                  # 4 CandidateSpec: decisions + how they were made
    ...                                   # the experiment evaluates them (any executor)
    strat.tell(results)                   # the finished search.store.Candidate rows, in id order

Determinism: a strategy's only randomness is the ``numpy.random.Generator`` it is built with,
and it depends only on the sequence of ``ask``/``tell`` calls. The experiment loop relies on
this to rebuild a strategy's state after ``--resume``: it replays every stored round (ask the
same number, check the decisions match the stored ones, tell the stored results).

Adding a strategy (hill-climbing, Petridish, ...): subclass :class:`Strategy`, give it a
``name`` and an ``OPTIONS`` dict of its keyword options with defaults, and decorate it with
:func:`register_strategy`; ``archir search --strategy <name>`` then finds it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np

from archir.errors import ArchirError

__all__ = ["CandidateSpec", "Strategy", "STRATEGIES", "register_strategy", "get_strategy", "mutation_op",
           "StrategyError"]


class StrategyError(ArchirError, ValueError):
    """A strategy was asked for by a wrong name or with wrong options.

    Attributes:
        hint: how to fix it (one line); ``message``, ``where`` and the rest as for
            :class:`archir.ArchirError` (``where=``/``file=``/``candidate=`` are accepted too).
    """

    def __init__(self, message: str, hint: str | None = None, **where: Any) -> None:
        super().__init__(message, hint=hint, **where)


@dataclass
class CandidateSpec:
    """A candidate as a strategy proposes it (the experiment gives it an id and a seed).

    Attributes:
        decisions: the space's decisions (plain JSON).
        op: what produced it: ``"sample"``, ``"mutate:<decision key>"``, ...
        parents: ids of the candidates it derives from.
    """

    decisions: dict
    op: str = "sample"
    parents: list[int] = field(default_factory=list)


class Strategy(ABC):
    """Base class of ask/tell search strategies.

    Args:
        space: the search space (``search.spaces.Space``: ``sample``, ``mutate``, ``encode``).
        rng: the strategy's only source of randomness.
        **options: the strategy's options (see its ``OPTIONS``).
    """

    name: ClassVar[str] = ""
    OPTIONS: ClassVar[dict[str, Any]] = {}
    #: True for strategies that grow trained parents (the ``start`` space, ``search.morph``).
    GROWS: ClassVar[bool] = False

    #: the strategy proposes the space's ``seeds`` (e.g. ``--start-genotype``) before anything else
    SEEDS = False

    #: set by the run loop for an asynchronous run (``ExperimentConfig.scheduling == "async"``): results are
    #: told one at a time as they arrive, and ``ask(n)`` may return fewer than ``n`` candidates -- none when
    #: the strategy needs a result still in flight before it can propose more (a PNAS stage, a hill
    #: climber's start graph). An ask that returns nothing must change nothing (no draw, no state), so that
    #: a resumed run replays exactly.
    asynchronous = False

    def __init__(self, space, rng: np.random.Generator, **options) -> None:
        if getattr(space, "seeds", None) and not self.SEEDS:
            raise StrategyError(f"strategy {self.name!r} does not start from given architectures "
                                "(--start-genotype)", hint="use --strategy evolution or random, or drop the start")
        if getattr(space, "grows", False) and not self.GROWS:
            raise StrategyError(f"strategy {self.name!r} samples the decisions of a search space; the "
                                f"{getattr(space, 'name', space)!r} space only grows trained networks",
                                hint="pass --space chain or darts, or grow with --strategy hillclimb or petridish")
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            raise StrategyError(f"strategy {self.name!r}: unknown option(s) {unknown}",
                                hint=f"its options are {sorted(self.OPTIONS) or 'none'}")
        self.space = space
        self.rng = rng
        self.options = {**self.OPTIONS, **options}

    @abstractmethod
    def ask(self, n: int) -> list[CandidateSpec]:
        """Propose ``n`` candidates (in an asynchronous run: at most ``n``, see :attr:`asynchronous`)."""

    @abstractmethod
    def tell(self, results: Sequence) -> None:
        """Learn from finished candidates (``search.store.Candidate``: status, score, within_budget): a round's
        in id order, or in an asynchronous run one at a time in the order they finished."""

    def status(self) -> str:
        """One line for the progress display after each round (e.g. a controller's reward), or ``""``."""
        return ""


STRATEGIES: dict[str, type[Strategy]] = {}


def register_named(registry: dict[str, type], cls: type, kind: str) -> type:
    """Put ``cls`` into ``registry`` under ``cls.name`` (a name taken by another class is an error)."""
    if not cls.name:
        raise TypeError(f"{cls.__name__}: a {kind} needs a class attribute 'name'")
    if cls.name in registry and registry[cls.name] is not cls:
        raise TypeError(f"{kind} name {cls.name!r} is taken by {registry[cls.name].__name__}")
    registry[cls.name] = cls
    return cls


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    return register_named(STRATEGIES, cls, "strategy")


def get_strategy(name: str, space, seed: int | np.random.Generator = 0, **options) -> Strategy:
    """Build the strategy called ``name`` on ``space``.

    Args:
        name: a key of :data:`STRATEGIES` (``"random"``, ``"evolution"``).
        space: the search space.
        seed: an int seed or a ``numpy.random.Generator``.
        **options: the strategy's options.

    Raises:
        StrategyError: unknown name or option.

    Example:
        >>> s = get_strategy("random", space, seed=0)     # doctest: +SKIP
        >>> [c.op for c in s.ask(2)]                       # doctest: +SKIP
        ['sample', 'sample']
    """
    if name not in STRATEGIES:
        raise StrategyError(f"unknown strategy {name!r}", hint=f"choose one of {sorted(STRATEGIES)}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return STRATEGIES[name](space, rng, **options)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(d, list):
        out = {}
        for i, v in enumerate(d):
            out.update(_flat(v, f"{prefix}[{i}]"))
        return out or {prefix: d}
    return {prefix: d}


def mutation_op(space, parent: dict, child: dict) -> str:
    """``"mutate:<keys>"``: the decision keys (dotted, ``[i]`` for list items) that differ."""
    a, b = _flat(space.encode(parent)), _flat(space.encode(child))
    keys = sorted(k for k in set(a) | set(b) if a.get(k, object()) != b.get(k, object()))
    if not keys:
        return "mutate:none"
    return "mutate:" + "+".join(keys[:3]) + (f"+{len(keys) - 3} more" if len(keys) > 3 else "")
