"""PARSEC (Casale et al., 2019): probabilistic architecture search by Monte Carlo empirical Bayes.

A categorical prior ``p(a | pi)`` over architectures (one independent categorical per variable,
logits ``pi``) and the supernet's shared weights ``w`` are fitted together. Per mini-batch:

1. draw ``K`` architectures ``a_1..a_K ~ p(a | pi)`` (``samples``; the driver's numpy Generator);
2. their likelihoods ``log p(y | x, w, a_k)`` (summed cross-entropy, no gradient) give the
   importance weights ``omega_k = softmax_k(log p(y | x, w, a_k))`` -- the posterior
   ``p(a | D) ~ p(D | a) p(a | pi)`` weighed over samples drawn from the prior itself;
3. weights: ``w += lr * sum_k omega_k grad_w log p(y | x, w, a_k)`` (SGD with momentum, one
   forward/backward per sample, gradients accumulated);
4. prior (the empirical-Bayes M-step): ascend ``sum_k omega_k log p(a_k | pi)``, whose gradient
   per variable is ``sum_k omega_k onehot(a_k) - softmax(pi)`` (Adam, ``prior_lr``).

Memory is that of training one sampled architecture: the supernet is lowered with
``choice_mode="fixed"`` and the samplers' indices are set per sample, so only the sampled path
runs (``archir.lower.modules.ChoiceModule`` single-path), sharing the supernet's weights.

The prior lives on the space's categorical view (``space.variables()``, ``to_choices``,
``from_choices``) where every point maps into the supernet (the DARTS space: a genotype's two
inputs and ops per node); elsewhere (the chain space, whose view also picks widths a fixed-width
supernet cannot vary) on the supernet's own decisions (``view="supernet"``: one categorical per
decision key). The derived architecture is the prior's mode. The prior does not depend on the
network's size, so it transfers to a larger network (:meth:`ParsecDriver.transfer`: a driver on
``space.supernet(cells=, channels=)`` starting from this prior, fine-tuned by further steps).

Options: ``samples`` (K), ``w_lr``, ``w_momentum``, ``w_decay``, ``prior_lr``, ``grad_clip``,
``view`` (``auto``, ``space``, ``supernet``), ``cells`` / ``channels`` (the supernet's size for
spaces that take them; 0: the space's), and the common ones.

Weight sharing (common option ``inherit``, default true): the derived architecture is cut out of
the trained supernet and fine-tuned. A supernet of another size than the space's networks
(``cells``/``channels`` other than the space's) cannot give them, so such a run with
``inherit=true`` is refused before the first step (``StrategyError``, hint ``inherit=false``:
the derived genotype is then trained from scratch at the space's size).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from archir import decision_keys
from archir.lower import to_fx
from archir.lower.fx import weight_parameters
from search.oneshot.base import OneShotDriver, categorical_entropy, decisions_from_probs, register_oneshot

__all__ = ["ParsecDriver"]


@register_oneshot
class ParsecDriver(OneShotDriver):
    """PARSEC: a categorical prior, K sampled architectures per batch, importance-weighted MC-EB updates."""

    name = "parsec"
    OPTIONS: dict[str, Any] = {"samples": 4, "w_lr": 0.05, "w_momentum": 0.9, "w_decay": 3e-4, "prior_lr": 0.05,
                               "grad_clip": 5.0, "view": "auto", "cells": 0, "channels": 0}

    def __init__(self, space, dataset, config, seed: int = 0, **options) -> None:
        super().__init__(space, dataset, config, seed, **options)
        from search.strategies import StrategyError

        self._check_int("samples", 1)
        self._check_int("cells", 0)
        self._check_int("channels", 0)
        for k in ("w_lr", "prior_lr"):
            self._check_num(k, 0.0, strict=True)
        for k in ("w_decay", "grad_clip"):
            self._check_num(k, 0.0)
        self._check_num("w_momentum", 0.0, hi=0.999)
        view = self.options["view"]
        if view not in ("auto", "space", "supernet"):
            raise StrategyError(f"strategy 'parsec': option view={view!r} is not auto, space or supernet",
                                hint="--strategy-opt view=auto")
        self.view = getattr(space, "prior_view", "supernet") if view == "auto" else view
        size = {k: self.options[k] for k in ("cells", "channels") if self.options[k]}
        if set(size) - set(getattr(space, "supernet_sizes", ())):
            raise StrategyError(f"strategy 'parsec': options {sorted(size)} need a space whose supernet takes them "
                                f"(darts), not {space.name!r}", hint="drop --strategy-opt cells/channels")
        self.supernet = space.supernet(seed=int(self.rng.integers(2 ** 31)), **size)
        self.gm = to_fx(self.supernet, choice_mode="fixed").to(self.device)
        self.gm.train()
        self.keys = decision_keys(self.supernet)
        self.samplers = {k: self.gm.get_submodule(p) for k, p in self.gm.meta["archir_arch"].items()}
        if self.view == "space":
            self.variables = list(space.variables())
        else:
            self.variables = [(k, len(v)) for k, v in self.keys.items()]
        self.prior = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(n, device=self.device))
                                             for _, n in self.variables])
        self.weights = weight_parameters(self.gm)
        for s in self.samplers.values():  # the samplers' own logits are unused (the prior decides)
            s.logits.requires_grad_(False)
        o = self.options
        self.w_opt = torch.optim.SGD(self.weights, lr=o["w_lr"], momentum=o["w_momentum"], weight_decay=o["w_decay"])
        self.p_opt = torch.optim.Adam(list(self.prior), lr=o["prior_lr"])
        self.last_archs: list[list[int]] = []  # the architectures sampled for the last batch

    # ---------------------------------------------------------------- the prior

    def prior_probs(self) -> list[np.ndarray]:
        """Per variable, the prior's probabilities (numpy, float64)."""
        return [torch.softmax(p.detach().double(), -1).cpu().numpy() for p in self.prior]

    def sample(self) -> list[int]:
        """One architecture from the prior, as one option index per variable (from ``self.rng``)."""
        return [int(self.rng.choice(len(p), p=p / p.sum())) for p in self.prior_probs()]

    def supernet_choice(self, choices: list[int]) -> dict[str, int]:
        """Decision key -> candidate index in the supernet for one point of the view."""
        if self.view == "supernet":
            return {k: int(c) for (k, _), c in zip(self.variables, choices)}
        names = self.space.supernet_decisions(self.space.from_choices(choices), self.supernet)
        return {k: self.keys[k].index(v) for k, v in names.items()}

    def set_arch(self, choices: list[int]) -> None:
        """Make the supernet run architecture ``choices`` (only its path is materialised)."""
        for k, i in self.supernet_choice(choices).items():
            self.samplers[k].index = i

    def plain_graph(self, choices: list[int]):
        """Architecture ``choices`` as a plain graph with the supernet's current weights (only its path)."""
        from archir import derive
        from archir.lower import sync_back
        from search.spaces.base import simplify

        return simplify(derive(sync_back(self.supernet, self.gm), self.supernet_choice(choices))).validate()

    def mode(self) -> list[int]:
        """The prior's most probable architecture."""
        return [int(np.argmax(p)) for p in self.prior_probs()]

    def entropy(self) -> float:
        return categorical_entropy([p.detach() for p in self.prior])

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"supernet": self.gm, "prior": self.prior}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"w": self.w_opt, "prior": self.p_opt}

    # ---------------------------------------------------------------- a step

    def batch_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """One PARSEC update on one batch; returns (importance-weighted loss, effective sample size)."""
        archs = [self.sample() for _ in range(int(self.options["samples"]))]
        self.last_archs = archs
        with torch.no_grad():
            ll = []
            for a in archs:
                self.set_arch(a)
                with self.autocast():
                    out = self.gm(x)
                ll.append(-F.cross_entropy(out.float(), y, reduction="sum").double())
        omega = torch.softmax(torch.stack(ll), 0).cpu()  # read once per batch: the skips below need it
        self.w_opt.zero_grad(set_to_none=True)
        total = self.zeros()
        for a, w in zip(archs, omega.tolist()):
            if w < 1e-12:  # contributes nothing: skip its backward (saves time, not memory)
                continue
            self.set_arch(a)
            with self.autocast():
                out = self.gm(x)
            loss = F.cross_entropy(out.float(), y)
            (w * loss).backward()
            total += w * loss.detach().double()
        if self.options["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(self.weights, self.options["grad_clip"])
        self.w_opt.step()
        # M-step of the prior: d/dpi of -sum_k omega_k log p(a_k | pi) = softmax(pi) - sum_k omega_k onehot(a_k)
        self.p_opt.zero_grad(set_to_none=True)
        for i, p in enumerate(self.prior):
            target = torch.zeros(p.shape[0], dtype=torch.float64)
            for a, w in zip(archs, omega):
                target[a[i]] += w
            p.grad = (torch.softmax(p.detach().double(), -1) - target.to(p.device)).to(p.dtype)
        self.p_opt.step()
        return float(total), float(1.0 / (omega ** 2).sum())

    def step(self) -> dict:
        total, ess, seen, batches = 0.0, 0.0, 0, 0
        for x, y in self.batches("train"):
            loss, e = self.batch_step(x, y)
            total += loss * len(y)
            seen += len(y)
            ess += e
            batches += 1
        self.set_arch(self.mode())
        return {"loss": total / max(1, seen), "mode_val_error": self.val_error(self.gm), "entropy": self.entropy(),
                "ess": ess / max(1, batches)}

    def derive(self) -> dict:
        if self.view == "space":
            return self.space.from_choices(self.mode())
        probs = {k: p for (k, _), p in zip(self.variables, self.prior_probs())}
        return decisions_from_probs(self.space, self.supernet, probs, drop_zero=True)

    # ---------------------------------------------------------------- transfer

    def transfer(self, *, cells: int | None = None, channels: int | None = None, **options) -> "ParsecDriver":
        """A driver on a larger supernet (``space.supernet(cells=, channels=)``) whose prior starts from this one
        (on this driver's device, with its ``amp``).

        Its steps fine-tune the transferred distribution (and train the larger network's weights).

        Raises:
            StrategyError: the prior is not on the space's view, or the space's supernet has no size.
        """
        from search.strategies import StrategyError

        if self.view != "space":
            raise StrategyError("strategy 'parsec': only a prior on the space's categorical view transfers to "
                                "another network size", hint="use the darts space (view=space)")
        opts = {**{k: v for k, v in self.options.items()}, **options, "cells": int(cells or 0),
                "channels": int(channels or 0)}
        new = type(self)(self.space, self.dataset, self.config, self.seed, run_dir=self.run_dir, device=self.device,
                         amp=self.amp, **opts)
        with torch.no_grad():
            for dst, src in zip(new.prior, self.prior):
                dst.copy_(src)
        return new

    def load_extra_state(self, js: Mapping, tensors: Mapping[str, torch.Tensor]) -> None:
        self.set_arch(self.mode())
