"""NAS-RL: an LSTM controller trained with REINFORCE on separately trained children
(Zoph & Le, "Neural Architecture Search with Reinforcement Learning", ICLR 2017), at small scale.

- ``ask(n)``: the controller (:class:`search.controller.Controller`) samples ``n`` children,
  one option index per ``space.variables()`` entry, turned into decisions by
  ``space.from_choices``. The experiment loop trains each child from scratch on an executor
  (the normal ``run_search`` path), so children of one round train in parallel.
- ``tell(results)``: one REINFORCE update on the round's finished children (in an asynchronous
  run, one update per child as its result arrives, as Zoph & Le's workers sent each child's
  gradient to the parameter server). The reward is
  ``-score`` -- ``1 - val_error`` up to a constant for ``--objective error`` (Zoph & Le's
  validation accuracy; the baseline absorbs the constant), and the negative scalarised score
  when the objective has a cost. A child over the hard budget (``--max-latency-ms``) gets
  ``-score - budget_penalty``; failed children are left out of the update (no reward to give).

Options: ``hidden`` (32), ``lr`` (0.005), ``baseline_decay`` (0.9), ``entropy_weight``
(1e-3), ``tanh_constant`` (1.5), ``temperature`` (1.0), ``grad_clip`` (5.0): the
controller's; ``budget_penalty`` (1.0).

Determinism and resume: the controller is seeded from the strategy's numpy Generator at
construction and all its computation is deterministic on CPU, so replaying the stored rounds
(the same asks, the same tells) rebuilds exactly the same controller -- weights, Adam
moments, baseline and the torch generator's state (``tests/search/test_reinforce.py`` checks
this bit for bit). ``controller_state()`` gives that state as JSON + tensors.
"""

from __future__ import annotations

import math
from typing import Sequence

from search.controller import Controller, ControllerError
from search.strategies.base import CandidateSpec, Strategy, StrategyError, register_strategy

__all__ = ["Reinforce", "reward_of"]

_CONTROLLER_OPTIONS = ("hidden", "lr", "baseline_decay", "entropy_weight", "tanh_constant", "temperature",
                       "grad_clip")


def reward_of(c, budget_penalty: float = 1.0) -> float | None:
    """The REINFORCE reward of a finished candidate row (higher is better), or None when it failed."""
    if c.status != "done" or c.score is None or not math.isfinite(float(c.score)):
        return None
    return -float(c.score) - (0.0 if c.within_budget else float(budget_penalty))


def controller_for(space, rng, options: dict, who: str) -> Controller:
    """A :class:`Controller` on ``space.variables()`` seeded from ``rng`` with the controller keys of ``options``."""
    try:
        variables = space.variables()
    except NotImplementedError:
        raise StrategyError(f"{who}: the space {space.name!r} has no categorical view (space.variables())",
                            hint="use the chain or darts space") from None
    seed = int(rng.integers(0, 2 ** 62))
    try:
        return Controller(variables, seed=seed, **{k: options[k] for k in _CONTROLLER_OPTIONS if k in options})
    except ControllerError as e:
        raise StrategyError(f"{who}: {e.message}", hint=e.hint) from None


@register_strategy
class Reinforce(Strategy):
    """NAS-RL's REINFORCE controller (see the module docstring for the options)."""

    name = "reinforce"
    OPTIONS = {**{k: Controller.OPTIONS[k] for k in _CONTROLLER_OPTIONS}, "budget_penalty": 1.0}

    def __init__(self, space, rng, **options) -> None:
        super().__init__(space, rng, **options)
        bp = self.options["budget_penalty"]
        if isinstance(bp, bool) or not isinstance(bp, (int, float)) or not (bp >= 0 and math.isfinite(bp)):
            raise StrategyError(f"reinforce: budget_penalty must be a finite number >= 0, got {bp!r}",
                                hint="pass --strategy-opt budget_penalty=1.0")
        self.controller = controller_for(space, rng, self.options, "reinforce")
        self.history: list[dict] = []  # one row of update statistics per tell that updated
        self._asked: list[list[int]] = []  # the sampled choices of the asks not yet told, in ask (= id) order

    def ask(self, n: int) -> list[CandidateSpec]:
        import torch

        out = []
        with torch.no_grad():
            for _ in range(n):
                s = self.controller.sample()
                self._asked.append(s.choices)
                out.append(CandidateSpec(decisions=self.space.from_choices(s.choices), op="controller"))
        return out

    def tell(self, results: Sequence) -> None:
        choices, rewards = [], []
        for c in results:
            # the sampled indices, not to_choices(decisions): they differ where a choice is ignored (the width
            # of a skipped chain layer), and the update must score what the controller drew. A result is
            # matched with the earliest untold ask of its decisions (a round's results come in id = ask order;
            # an asynchronous run's in the order they finished).
            decided = self.space.decode(c.decisions)
            k = next((i for i, s in enumerate(self._asked) if self.space.from_choices(s) == decided), None)
            ch = self._asked.pop(k) if k is not None else self.space.to_choices(c.decisions)
            r = reward_of(c, self.options["budget_penalty"])
            if r is None:
                continue
            choices.append(ch)
            rewards.append(r)
        if choices:
            self.history.append(self.controller.update(choices, rewards))

    def controller_state(self):
        """The controller's ``(meta, tensors)`` (see :meth:`search.controller.Controller.state`)."""
        return self.controller.state()

    def status(self) -> str:
        """One line for progress displays: the controller's last mean reward, baseline and entropy."""
        if not self.history:
            return "controller: no update yet"
        h = self.history[-1]
        return (f"controller: {len(self.history)} updates, reward {h['reward']:.3f}, baseline {h['baseline']:.3f}, "
                f"entropy {h['entropy']:.2f}")
