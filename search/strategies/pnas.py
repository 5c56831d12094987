"""PNAS: progressive search over cells of growing size with a learned surrogate
(Liu et al., "Progressive Neural Architecture Search", ECCV 2018), on archir's spaces.

The space is searched in *stages*; stage ``b`` decides a few more of the space's categorical
variables (``space.variables()``), and every variable not decided yet holds a fixed *filler*
value, so each partial architecture is a real member of the space that trains and exports:

- **darts**: stage ``b`` decides node ``b`` of both cell kinds (its input pair and two ops): a
  cell with ``b + 1`` nodes. The space always has four nodes (the cell output concatenates
  them), so an undecided node ``n`` is the filler block ``skip_connect(state n) +
  skip_connect(state n + 1)``: parameter-free in normal cells (identities), it passes earlier
  states on and keeps the cell's width, like an absent block would in a PNAS cell whose output
  concatenates the blocks it has.
- **chain**: stage ``i`` decides layer ``i`` (block and width): networks grow layer by layer.
  An undecided layer is skipped where it may be (stride 1) and is the cheapest block
  (first kernel, first expansion, first width) where it may not.
- **nb201** (and any space with a ``progressive_plan()`` method, which gives the stages and filler):
  node 1, then node 2, then node 3 of the cell; an undecided node is ``skip_connect`` from the node
  before it and ``none`` from the others.
- any other space with a categorical view: one variable per stage, filler option 0.

The search (beam width ``K`` = ``beam``):

1. stage 0: ``K`` expansions of the all-filler architecture, drawn uniformly (no data yet to
   rank them with; PNAS trains all one-block cells, which is too many here);
2. after a stage's children are trained, the beam is the ``K`` best of them (within the hard
   budget first, then by score). A surrogate is trained on *every* result so far and ranks all
   expansions of the beam by the next stage (every assignment of the stage's variables; when a
   member has more than ``max_expansions``, that many drawn uniformly without replacement);
   the ``K`` best-predicted unevaluated ones are trained next;
3. after the last stage (full-size architectures) the search goes on while the budget lasts:
   the surrogate ranks the unevaluated one-variable changes of the beam (local refinement),
   and a uniform sample of the space is the fallback when none are left.

The surrogate is an ensemble (``ensemble`` members, PNAS uses 5) of 2-layer MLPs over the
one-hot choices plus one "decided" flag per variable, fitted (Adam, ``surrogate_steps`` full-batch
steps) to the standardised scores (a child over the hard budget gets ``score + budget_penalty``;
failed children are left out); the ensemble's mean predicted score ranks the expansions.

Rounds: a step's ``K`` children are handed out over as many ``ask`` calls as the round size
needs; when a step's children are not all told when the next step starts (a round size that
does not divide ``K``), the beam is picked from the results told so far. In an asynchronous run
the next step waits instead: once a step's children are handed out, ``ask`` returns nothing until
every one of them is told, so each step ranks all of the previous step's results.

Determinism: every draw and every surrogate initialisation comes from the strategy's numpy
Generator, and the surrogate trains on one thread, so replaying the stored rounds rebuilds the
same state (``--resume``).

Options: ``beam`` (4), ``max_expansions`` (2000), ``ensemble`` (3), ``hidden`` (64),
``surrogate_steps`` (300), ``surrogate_lr`` (0.01), ``budget_penalty`` (1.0).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from search.strategies.base import CandidateSpec, Strategy, StrategyError, register_strategy

__all__ = ["PNAS", "Plan", "progressive_plan", "Surrogate"]


@dataclass(frozen=True)
class Plan:
    """How a space is searched progressively.

    Attributes:
        stages: per stage, the indices (into ``space.variables()``) it decides.
        filler: the value of every variable while it is undecided.
        unit: what a stage adds (``"node"``, ``"layer"``, ``"variable"``), for descriptions.
    """

    stages: tuple[tuple[int, ...], ...]
    filler: tuple[int, ...]
    unit: str


def progressive_plan(space) -> Plan:
    """The stages and filler values of ``space`` (see the module docstring).

    Raises:
        StrategyError: the space has no categorical view.

    Example:
        >>> from search.spaces import get_space
        >>> plan = progressive_plan(get_space("darts", input_shape=(1, 8, 8), num_classes=10))
        >>> len(plan.stages), len(plan.stages[0])      # 4 nodes; inputs + 2 ops in both cell kinds
        (4, 6)
    """
    try:
        names = [n for n, _ in space.variables()]
    except NotImplementedError:
        raise StrategyError(f"pnas: the space {getattr(space, 'name', space)!r} has no categorical view",
                            hint="use the chain or darts space") from None
    own = getattr(space, "progressive_plan", None)
    plan = own() if callable(own) else None
    if plan is not None:  # the space knows how it grows (darts, nb201: node by node; chain: layer by layer)
        stages, filler, unit = plan
        return Plan(tuple(tuple(int(i) for i in st) for st in stages), tuple(int(v) for v in filler), str(unit))
    return Plan(tuple((i,) for i in range(len(names))), tuple(0 for _ in names), "variable")


@contextlib.contextmanager
def _one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class Surrogate:
    """An ensemble of small MLPs predicting a score from the categorical encoding.

    Args:
        sizes: options per variable (``[n for _, n in space.variables()]``).
        ensemble, hidden, steps, lr: the ensemble size, hidden width, Adam steps and rate.

    Example:
        >>> s = Surrogate([2, 3], ensemble=1)
        >>> s.fit([[0, 1], [1, 2]], [[True, True]] * 2, [0.1, 0.9], np.random.default_rng(0))
        >>> s.predict([[0, 1]], [[True, True]]).shape
        (1,)
    """

    def __init__(self, sizes: Sequence[int], *, ensemble: int = 3, hidden: int = 64, steps: int = 300,
                 lr: float = 0.01) -> None:
        self.sizes = [int(n) for n in sizes]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self.ensemble, self.hidden, self.steps, self.lr = int(ensemble), int(hidden), int(steps), float(lr)
        self.models: list = []
        self.mean, self.std = 0.0, 1.0

    def encode(self, choices: Sequence[Sequence[int]], decided: Sequence[Sequence[bool]]) -> np.ndarray:
        """One-hot choices followed by the per-variable "decided" flags: ``(N, sum(sizes) + len(sizes))``."""
        ch = np.asarray(choices, dtype=np.int64).reshape(-1, len(self.sizes))
        x = np.zeros((len(ch), sum(self.sizes) + len(self.sizes)), dtype=np.float32)
        rows = np.arange(len(ch))[:, None]
        x[rows, self.offsets[None, :] + ch] = 1.0
        x[:, sum(self.sizes):] = np.asarray(decided, dtype=np.float32).reshape(len(ch), -1)
        return x

    def fit(self, choices, decided, scores, rng: np.random.Generator) -> None:
        """Fit the ensemble to ``scores`` (lower is better); each member seeded from ``rng``."""
        import torch
        from torch import nn

        x = torch.from_numpy(self.encode(choices, decided))
        y = np.asarray(scores, dtype=np.float64)
        self.mean = float(y.mean())
        self.std = float(y.std()) if len(y) > 1 and y.std() > 1e-12 else 1.0
        t = torch.from_numpy(((y - self.mean) / self.std).astype(np.float32))
        self.models = []
        with _one_thread():
            for _ in range(self.ensemble):
                g = torch.Generator().manual_seed(int(rng.integers(0, 2 ** 62)))
                m = nn.Sequential(nn.Linear(x.shape[1], self.hidden), nn.ReLU(), nn.Linear(self.hidden, self.hidden),
                                  nn.ReLU(), nn.Linear(self.hidden, 1))
                with torch.no_grad():
                    for p in m.parameters():  # seeded init (never torch's global RNG)
                        bound = 1.0 / math.sqrt(p.shape[-1]) if p.dim() > 1 else 0.05
                        p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * bound)
                opt = torch.optim.Adam(m.parameters(), lr=self.lr, weight_decay=1e-4)
                for _ in range(self.steps):
                    loss = ((m(x).squeeze(-1) - t) ** 2).mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                self.models.append(m.eval())

    def predict(self, choices, decided) -> np.ndarray:
        """The ensemble's mean predicted score per row (in score units)."""
        import torch

        if not self.models:
            raise RuntimeError("Surrogate.predict before fit")
        x = torch.from_numpy(self.encode(choices, decided))
        with torch.no_grad(), _one_thread():
            p = torch.stack([m(x).squeeze(-1) for m in self.models]).mean(0).numpy().astype(np.float64)
        return p * self.std + self.mean


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise StrategyError(f"pnas: {name} must be an int >= 1, got {v!r}",
                            hint=f"pass --strategy-opt {name}={PNAS.OPTIONS[name]}")
    return int(v)


@register_strategy
class PNAS(Strategy):
    """Progressive search with a surrogate-ranked beam (see the module docstring for the options)."""

    name = "pnas"
    OPTIONS = {"beam": 4, "max_expansions": 2000, "ensemble": 3, "hidden": 64, "surrogate_steps": 300,
               "surrogate_lr": 0.01, "budget_penalty": 1.0}

    def __init__(self, space, rng, **options) -> None:
        super().__init__(space, rng, **options)
        for k in ("beam", "max_expansions", "ensemble", "hidden", "surrogate_steps"):
            self.options[k] = _positive_int(k, self.options[k])
        for k in ("surrogate_lr", "budget_penalty"):
            v = self.options[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
                raise StrategyError(f"pnas: {k} must be a finite number >= 0, got {v!r}",
                                    hint=f"pass --strategy-opt {k}={self.OPTIONS[k]}")
        self.plan = progressive_plan(space)
        self.sizes = [n for _, n in space.variables()]
        self.stage = -1                      # the stage whose children are being handed out / trained
        self.queue: list[tuple[list[int], str, list[int]]] = []   # (choices, op, parents) still to ask
        self.asked: dict[tuple, int] = {}    # choices -> the stage they were asked at (never ask twice)
        self.results: list[tuple[list[int], int, object]] = []    # (choices, stage, candidate row), told
        self.surrogate: Surrogate | None = None
        self.last_rank: list[float] = []     # predicted scores of the last step's picks (progress, tests)
        self.n_asked = 0                     # asks handed out (an asynchronous run waits for all of a step's)

    # ---------------------------------------------------------------- helpers

    def _decided(self, stage: int) -> list[bool]:
        done = set(itertools.chain.from_iterable(self.plan.stages[:stage + 1]))
        return [i in done for i in range(len(self.sizes))]

    def _expansions(self, base: Sequence[int], stage: int) -> list[list[int]]:
        """Every assignment of ``stage``'s variables on top of ``base`` (at most ``max_expansions``, drawn)."""
        idx = self.plan.stages[stage]
        sizes = [self.sizes[i] for i in idx]
        total = math.prod(sizes)
        cap = self.options["max_expansions"]
        if total <= cap:
            flat = range(total)
        else:
            flat = sorted(int(v) for v in self.rng.choice(total, size=cap, replace=False))
        out = []
        for f in flat:
            ch = list(base)
            for i, n in zip(reversed(idx), reversed(sizes)):
                f, ch[i] = divmod(f, n)
            out.append(ch)
        return out

    def _neighbours(self, base: Sequence[int]) -> list[list[int]]:
        out = []
        for i, n in enumerate(self.sizes):
            for v in range(n):
                if v != base[i]:
                    ch = list(base)
                    ch[i] = v
                    out.append(ch)
        return out

    def _key(self, choices: Sequence[int]) -> tuple:
        # the canonical choices: two index lists that mean the same network are one candidate
        return tuple(self.space.to_choices(self.space.from_choices(choices)))

    def _target(self, c) -> float:
        return float(c.score) + (0.0 if c.within_budget else float(self.options["budget_penalty"]))

    def _beam(self, stage: int) -> list[tuple[list[int], object]]:
        rows = [(ch, c) for ch, s, c in self.results if s == stage and c.status == "done" and c.score is not None]
        rows.sort(key=lambda r: (not r[1].within_budget, float(r[1].score), r[1].id))
        return rows[:self.options["beam"]]

    def _fit(self) -> Surrogate | None:
        rows = [(ch, s, c) for ch, s, c in self.results if c.status == "done" and c.score is not None]
        if not rows:
            return None
        sur = Surrogate(self.sizes, ensemble=self.options["ensemble"], hidden=self.options["hidden"],
                        steps=self.options["surrogate_steps"], lr=self.options["surrogate_lr"])
        sur.fit([r[0] for r in rows], [self._decided(r[1]) for r in rows], [self._target(r[2]) for r in rows],
                self.rng)
        return sur

    def _rank(self, pool: list[tuple[list[int], list[int]]], stage: int, op: str) -> None:
        """Queue the ``beam`` best-predicted unasked members of ``pool`` ((choices, parents) pairs)."""
        seen, uniq = set(), []
        for ch, parents in pool:
            k = self._key(ch)
            if k in self.asked or k in seen:
                continue
            seen.add(k)
            uniq.append((list(k), parents))
        if not uniq:
            return
        self.surrogate = self._fit()
        if self.surrogate is None:  # nothing finished yet: a uniform draw
            order = [int(i) for i in self.rng.permutation(len(uniq))]
            self.last_rank = []
        else:
            pred = self.surrogate.predict([u[0] for u in uniq], [self._decided(stage)] * len(uniq))
            order = sorted(range(len(uniq)), key=lambda i: (pred[i], i))
            self.last_rank = [float(pred[i]) for i in order[:self.options["beam"]]]
        for i in order[:self.options["beam"]]:
            self.queue.append((uniq[i][0], op, uniq[i][1]))

    def _advance(self) -> None:
        last = len(self.plan.stages) - 1
        if self.stage < 0:
            self.stage = 0
            pool = self._expansions(self.plan.filler, 0)
            picked: set[tuple] = set()
            for i in self.rng.permutation(len(pool)):
                k = self._key(pool[int(i)])
                if k not in self.asked and k not in picked and len(picked) < self.options["beam"]:
                    picked.add(k)
                    self.queue.append((list(k), f"pnas:{self.plan.unit}1", []))
            return
        beam = self._beam(self.stage)
        if self.stage < last:
            nxt = self.stage + 1
            if not beam:  # every child of the stage failed: expand the all-filler architecture
                beam = [(list(self.plan.filler), None)]
            pool = [(ch, [] if c is None else [c.id]) for b, c in beam for ch in self._expansions(b, nxt)]
            self.stage = nxt
            self._rank(pool, nxt, f"pnas:{self.plan.unit}{nxt + 1}")
            return
        # after the last stage: surrogate-ranked one-variable changes of the full-size beam
        pool = [(ch, [c.id]) for b, c in self._beam(last) for ch in self._neighbours(b)]
        self._rank(pool, last, "pnas:refine")

    # ---------------------------------------------------------------- ask / tell

    def ask(self, n: int) -> list[CandidateSpec]:
        out = []
        for _ in range(n):
            if not self.queue and self.asynchronous and len(self.results) < self.n_asked:
                break  # the next step ranks this step's results: wait for the ones in flight
            if not self.queue:
                self._advance()
            if self.queue:
                ch, op, parents = self.queue.pop(0)
            else:  # nothing left to expand: a uniform sample keeps the search going
                ch = self.space.to_choices(self.space.sample(self.rng))
                op, parents = "sample", []
            self.asked[tuple(ch)] = self.stage
            self.n_asked += 1
            out.append(CandidateSpec(decisions=self.space.from_choices(ch), op=op, parents=parents))
        return out

    def tell(self, results: Sequence) -> None:
        for c in results:
            ch = self.space.to_choices(c.decisions)
            self.results.append((ch, self.asked.get(tuple(ch), self.stage), c))

    def status(self) -> str:
        """One line for progress displays: the stage and the surrogate's best predicted score."""
        best = f", predicted best score {self.last_rank[0]:.3f}" if self.last_rank else ""
        return f"pnas: {self.plan.unit} {self.stage + 1}/{len(self.plan.stages)}{best}"
