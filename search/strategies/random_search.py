"""Random search: every candidate is an independent sample of the space.

Random search is the baseline any NAS method must beat (Li & Talwalkar, 2019). It keeps the
encodings it has proposed and re-draws (up to ``retries`` times) a sample it has already
asked for, so a small space is not evaluated twice before it is exhausted.
"""

from __future__ import annotations

import json
from typing import Sequence

from search.strategies.base import CandidateSpec, Strategy, register_strategy

__all__ = ["RandomSearch"]


@register_strategy
class RandomSearch(Strategy):
    """Independent samples of the space (options: ``retries`` re-draws of a repeated sample)."""

    name = "random"
    SEEDS = True
    OPTIONS = {"retries": 20}

    def __init__(self, space, rng, **options) -> None:
        super().__init__(space, rng, **options)
        self._seen: set[str] = set()
        self._seeded = 0

    def ask(self, n: int) -> list[CandidateSpec]:
        out = []
        seeds = list(getattr(self.space, "seeds", ()))
        for _ in range(n):
            if self._seeded < len(seeds):  # the given architectures first
                d = seeds[self._seeded]
                self._seeded += 1
                self._seen.add(json.dumps(self.space.encode(d), sort_keys=True))
                out.append(CandidateSpec(decisions=d, op="start", parents=[]))
                continue
            for _ in range(int(self.options["retries"]) + 1):
                d = self.space.sample(self.rng)
                key = json.dumps(self.space.encode(d), sort_keys=True)
                if key not in self._seen:
                    break
            self._seen.add(key)
            out.append(CandidateSpec(decisions=d, op="sample", parents=[]))
        return out

    def tell(self, results: Sequence) -> None:
        pass  # random search learns nothing
