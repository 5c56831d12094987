"""ENAS: an LSTM controller trained with REINFORCE over a weight-sharing supernet
(Pham et al., "Efficient Neural Architecture Search via Parameter Sharing", ICML 2018).

One search step (``archir search --strategy enas``) alternates ENAS' two phases:

1. **shared weights**: for every training batch the controller
   (:class:`search.controller.Controller`) samples an architecture, the supernet runs only that
   path (``archir.lower.to_fx(supernet, choice_mode="fixed")``, lowered once; each sample sets
   the choice samplers' indices, so every architecture shares the supernet's weights), and SGD
   (momentum, weight decay, gradient norm clip) updates the path's weights on the cross-entropy;
2. **controller**: ``controller_steps`` REINFORCE updates, each on ``controller_batch``
   sampled architectures rewarded on a random validation batch (the supernet in eval mode,
   weights frozen). The reward is ``1 - val_error`` for ``--objective error``, and
   ``-(val_error + cost_weight * log2(cost))`` -- the experiment's score -- when the objective
   has a cost (MACs/params/FLOPs counted, or latency measured with ``costmodels.measure``, of the
   sampled architecture built by the space; cached per architecture). The moving-average
   baseline and entropy bonus are the controller's.

The progress line shows the shared loss, the controller's mean ``reward``, its ``baseline``
and the mean ``entropy`` (nats) of its samples.

**Variables**: the controller samples the space's categorical variables
(``space.variables()``) that the supernet can express: all of them for darts; for the chain
space the per-layer block only -- the supernet has one fixed width per layer (the widest
option), so widths are not searched and a derived chain network has the supernet's widths,
and a layer whose input width differs from that width has no residual and so cannot be skipped
(its block variable has the MBConv options only). The derived decisions therefore carry the
supernet's widths, so with ``inherit`` (the default) the derived chain network is exactly the
space's network of those decisions, with the supernet's trained weights.

**Derive**: the best of the controller's most likely architecture (argmax at every step) and
``derive_samples`` architectures sampled from it, by validation error of the shared weights on
the whole validation split (ENAS samples several and keeps the best). Its draws come from a
generator seeded by (seed, steps done), not the controller's, so deriving in the middle of a
search (``evaluate_every``) does not change the search.

**Devices**: the supernet, its optimiser and the batches live on the run's device (see
:mod:`search.oneshot.base`); the controller stays on the CPU (a tiny LSTM that reads back every
decision it samples: on a GPU each one would be a launch and a synchronisation), so its samples
are the same on every device.

**Checkpoint**: the supernet's weights, the controller's weights, both optimisers' state, and
(extra state) the controller's baseline, counters and generator state, so a resumed search
continues exactly (``tests/search/test_enas.py``).

Options (``--strategy-opt KEY=VALUE``; plus ``batch_size``, ``max_batches``, ``evaluate_every``):
``lr`` (0.05), ``momentum`` (0.9), ``weight_decay`` (3e-4), ``grad_clip`` (5.0): the shared
weights' SGD; ``controller_steps`` (10), ``controller_batch`` (4), ``controller_lr`` (0.005),
``baseline_decay`` (0.9), ``entropy_weight`` (1e-3), ``tanh_constant`` (1.5), ``temperature``
(1.0), ``hidden`` (32): the controller; ``derive_samples`` (8).
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from search.controller import Controller, ControllerError
from search.oneshot.base import OneShotDriver, register_oneshot

__all__ = ["ENAS"]


@register_oneshot
class ENAS(OneShotDriver):
    """ENAS on a space's supernet (see the module docstring for the options)."""

    name = "enas"
    OPTIONS = {"lr": 0.05, "momentum": 0.9, "weight_decay": 3e-4, "grad_clip": 5.0, "controller_steps": 10,
               "controller_batch": 4, "controller_lr": 0.005, "baseline_decay": 0.9, "entropy_weight": 1e-3,
               "tanh_constant": 1.5, "temperature": 1.0, "hidden": 32, "derive_samples": 8}

    def __init__(self, space, dataset, config, seed: int = 0, **options) -> None:
        super().__init__(space, dataset, config, seed, **options)
        from archir import decision_keys
        from archir.lower import to_fx, weight_parameters
        from search.config import parse_objective

        for k in ("lr", "grad_clip"):
            self._check_num(k, 0.0, strict=True)
        for k in ("momentum", "weight_decay"):
            self._check_num(k, 0.0)
        self._check_int("controller_steps", 0)
        self._check_int("controller_batch", 1)
        self._check_int("derive_samples", 0)
        try:
            variables = space.variables()
        except NotImplementedError:
            raise self._error(f"the space {space.name!r} has no categorical view (space.variables())",
                              "use the chain or darts space") from None
        self.supernet = space.supernet(seed=int(seed))
        self.keys = decision_keys(self.supernet)
        # which variables the controller samples; the rest are fixed (chain widths: the supernet's)
        self.fixed, ctl_vars = space.controller_variables(self.supernet)
        self.all_variables = list(variables)
        self.free = [i for i in range(len(variables)) if i not in self.fixed]
        try:
            self.controller = Controller(
                ctl_vars, seed=int(np.random.SeedSequence([int(seed), 11]).generate_state(1)[0]),
                hidden=self.options["hidden"], lr=self.options["controller_lr"],
                baseline_decay=self.options["baseline_decay"], entropy_weight=self.options["entropy_weight"],
                tanh_constant=self.options["tanh_constant"], temperature=self.options["temperature"])
        except ControllerError as e:
            raise self._error(e.message, e.hint or "see the enas options") from None
        self.module = to_fx(self.supernet, choice_mode="fixed").to(self.device)
        self.module.train()
        self.samplers = {k: self.module.get_submodule(p) for k, p in self.module.meta["archir_arch"].items()}
        self.optimizer = torch.optim.SGD(weight_parameters(self.module), lr=float(self.options["lr"]),
                                         momentum=float(self.options["momentum"]),
                                         weight_decay=float(self.options["weight_decay"]))
        self.objective = parse_objective(config.objective)
        self._costs: dict[tuple, float] = {}
        self._last_entropy = math.nan

    # ---------------------------------------------------------------- helpers

    def _error(self, message: str, hint: str):
        from search.strategies import StrategyError

        return StrategyError(f"strategy 'enas': {message}", hint=hint)

    def full_choices(self, free: list[int]) -> list[int]:
        """The controller's choices (free variables) completed with the fixed ones, in ``space.variables()`` order."""
        out = [0] * len(self.all_variables)
        for i, v in self.fixed.items():
            out[i] = v
        for i, v in zip(self.free, free):
            out[i] = int(v)
        return out

    def decisions_of(self, free: list[int]) -> dict:
        """The space's canonical decisions of the controller's choices."""
        return self.space.from_choices(self.full_choices(free))

    def select(self, free: list[int]) -> None:
        """Point the supernet's choice samplers at the architecture ``free`` (weight sharing)."""
        sd = self.space.supernet_decisions(self.decisions_of(free), self.supernet)
        for key, sampler in self.samplers.items():
            sampler.index = self.keys[key].index(sd[key])

    def _cost(self, free: list[int]) -> float:
        key = tuple(free)
        if key not in self._costs:
            import costmodels

            g = self.space.build(self.decisions_of(free), seed=0)
            if self.objective.cost == "latency":
                self._costs[key] = float(costmodels.measure(g, backend=self.objective.backend, batch_size=1,
                                                            threads=1, warmup=2, repeats=5).median_ms)
            else:
                self._costs[key] = float(getattr(costmodels.count(g), self.objective.cost))
        return self._costs[key]

    def reward(self, free: list[int], x: torch.Tensor, y: torch.Tensor) -> float:
        """The controller's reward of architecture ``free`` on the batch ``(x, y)`` (higher is better)."""
        self.select(free)
        err = self.error_of(self.module, x, y)
        if self.objective.cost is None:
            return 1.0 - err
        return -(err + float(self.config.cost_weight) * math.log2(max(self._cost(free), 1e-12)))

    # ---------------------------------------------------------------- the driver

    def step(self) -> dict:
        self.module.train()
        total, count = self.zeros(), 0
        for x, y in self.batches("train"):
            with torch.no_grad():
                arch = self.controller.sample().choices
            self.select(arch)
            with self.autocast():
                out = self.module(x)
            loss = F.cross_entropy(out.float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.optimizer.param_groups[0]["params"], float(self.options["grad_clip"]))
            self.optimizer.step()
            total += loss.detach().double() * len(y)
            count += len(y)
        rewards, ents, baseline = [], [], math.nan
        bs = int(self.options["batch_size"])
        for _ in range(int(self.options["controller_steps"])):
            idx = torch.from_numpy(self.rng.choice(len(self.y_val), size=min(bs, len(self.y_val)), replace=False))
            idx = idx.to(self.x_val.device)
            xv, yv = self.to_device(self.x_val[idx]), self.to_device(self.y_val[idx])
            archs, rs = [], []
            for _ in range(int(self.options["controller_batch"])):
                with torch.no_grad():
                    s = self.controller.sample()
                archs.append(s.choices)
                rs.append(self.reward(s.choices, xv, yv))
                ents.append(float(s.entropy))
            stats = self.controller.update(archs, rs)
            rewards += rs
            baseline = stats["baseline"]
        self._last_entropy = sum(ents) / len(ents) if ents else math.nan
        out = {"loss": float(total) / max(1, count), "reward": sum(rewards) / len(rewards) if rewards else math.nan,
               "baseline": baseline if baseline is not None else math.nan}
        out["entropy"] = self.entropy()
        return out

    def entropy(self) -> float:
        if math.isnan(self._last_entropy):
            with torch.no_grad():
                self._last_entropy = float(self.controller.log_prob(self.controller.most_likely())[1])
        return self._last_entropy

    def candidates(self, n: int) -> list[list[int]]:
        """The most likely architecture and ``n`` samples drawn with a generator seeded by (seed, steps done)."""
        out = [self.controller.most_likely()]
        if n:
            gen = torch.Generator().manual_seed(int(np.random.SeedSequence(
                [self.seed, 12, self.steps_done]).generate_state(1)[0]))
            saved, self.controller.generator = self.controller.generator, gen
            try:
                with torch.no_grad():
                    out += [self.controller.sample().choices for _ in range(n)]
            finally:
                self.controller.generator = saved
                self.controller.samples -= n  # these draws are not the search's
        return out

    def derive(self) -> dict:
        seen, best = set(), None
        for arch in self.candidates(int(self.options["derive_samples"])):
            if tuple(arch) in seen:
                continue
            seen.add(tuple(arch))
            self.select(arch)
            err = self.error_of(self.module, self.x_val, self.y_val)
            if best is None or err < best[0]:
                best = (err, arch)
        self.module.train()
        return self.space.encode(self.decisions_of(best[1]))

    # ---------------------------------------------------------------- checkpoint

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"supernet": self.module, "controller": self.controller}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"shared": self.optimizer, "controller": self.controller.optimizer}

    def extra_state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        js = {"baseline": self.controller.baseline, "updates": self.controller.updates,
              "samples": self.controller.samples,
              "last_entropy": None if math.isnan(self._last_entropy) else self._last_entropy,
              "costs": [[list(k), v] for k, v in self._costs.items()]}
        return js, {"controller_rng": self.controller.generator.get_state()}

    def load_extra_state(self, js: Mapping, tensors: Mapping[str, torch.Tensor]) -> None:
        c = self.controller
        c.baseline = None if js.get("baseline") is None else float(js["baseline"])
        c.updates, c.samples = int(js.get("updates", 0)), int(js.get("samples", 0))
        c.generator.set_state(tensors["controller_rng"].clone())
        le = js.get("last_entropy")
        self._last_entropy = math.nan if le is None else float(le)
        self._costs = {tuple(k): float(v) for k, v in js.get("costs", [])}
