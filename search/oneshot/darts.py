"""DARTS (Liu et al., 2019): differentiable architecture search, first and second order.

The supernet (``space.supernet()``) is lowered with ``choice_mode="softmax"``: every choice node
outputs ``sum_k softmax(alpha)_k * op_k(x)``, so every candidate runs and memory grows with
their number. Bilevel optimisation alternates, per mini-batch pair:

1. architecture step on a *validation* batch: ``alpha -= arch_lr * grad_alpha L_val(w*, alpha)``
   (Adam, betas (0.5, 0.999), weight decay ``arch_decay``), where
   - ``order=1``: ``w* = w`` (the first-order approximation);
   - ``order=2``: ``w* = w' = w - xi * grad_w L_train(w, alpha)`` (one unrolled SGD step), and
     ``grad_alpha L_val(w', alpha) - xi * grad^2_{alpha,w} L_train(w, alpha) grad_w' L_val(w', alpha)``,
     the Hessian-vector product by central differences at ``w +- eps * grad_w' L_val`` with
     ``eps = 0.01 / ||grad_w' L_val||`` (DARTS eq. 7-8; the virtual step has weight decay,
     not momentum);
2. weight step on a *training* batch: SGD with momentum on ``L_train(w, alpha)``.

Derivation (:meth:`DartsDriver.derive`): per node the two inputs whose strongest non-``none``
op has the largest softmax weight, each with that op (``search.oneshot.decisions_from_probs``;
on the chain space, the argmax of every layer, at the supernet's widths). With ``inherit`` (the
default) that architecture is cut out of the trained supernet and fine-tuned, not trained from
scratch (see :mod:`search.oneshot.base`).

Options: ``order`` (1 or 2), ``w_lr``, ``w_momentum``, ``w_decay``, ``arch_lr``, ``arch_decay``,
``xi`` (the virtual step's learning rate; 0 means ``w_lr``), ``grad_clip``, and the common ones
(``batch_size``, ``max_batches``, ``evaluate_every``). ``arch_lr`` defaults to 0.03, a hundred
times DARTS' 3e-4, because a search on digits runs a few epochs of a few batches, not fifty of
hundreds: the logits must move within that.

Example:
    >>> from search.experiment import ExperimentConfig, run_search       # doctest: +SKIP
    >>> run_search(ExperimentConfig(space="darts", strategy="darts", budget="3c",
    ...                             strategy_options={"order": 2}), "runs/darts")   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from archir.lower import to_fx
from archir.lower.fx import arch_parameters, weight_parameters
from search.oneshot.base import OneShotDriver, categorical_entropy, decisions_from_probs, register_oneshot

__all__ = ["RelaxedDriver", "DartsDriver"]


class RelaxedDriver(OneShotDriver):
    """Shared by DARTS and SNAS: a supernet lowered with a relaxed choice mode, a weight optimiser
    (SGD) and an architecture optimiser (Adam) over the logits held by the supernet's samplers."""

    CHOICE_MODE = "softmax"
    BASE_OPTIONS: dict[str, Any] = {"w_lr": 0.05, "w_momentum": 0.9, "w_decay": 3e-4, "arch_lr": 0.03,
                                    "arch_decay": 1e-3, "grad_clip": 5.0}

    def __init__(self, space, dataset, config, seed: int = 0, **options) -> None:
        super().__init__(space, dataset, config, seed, **options)
        for k in ("w_lr", "arch_lr"):
            self._check_num(k, 0.0, strict=True)
        for k in ("w_decay", "arch_decay", "grad_clip"):
            self._check_num(k, 0.0)
        self._check_num("w_momentum", 0.0, hi=0.999)
        self.supernet = space.supernet(seed=int(self.rng.integers(2 ** 31)))
        self.gm = to_fx(self.supernet, choice_mode=self.CHOICE_MODE).to(self.device)
        self.gm.train()
        self.weights = weight_parameters(self.gm)
        self.alphas = arch_parameters(self.gm)
        o = self.options
        self.w_opt = torch.optim.SGD(self.weights, lr=o["w_lr"], momentum=o["w_momentum"], weight_decay=o["w_decay"])
        self.a_opt = torch.optim.Adam(self.alphas, lr=o["arch_lr"], betas=(0.5, 0.999), weight_decay=o["arch_decay"])

    # ---------------------------------------------------------------- the distribution

    def samplers(self) -> dict[str, torch.nn.Module]:
        """Decision key -> the supernet's ``ArchSampler`` (holds the logits)."""
        return {k: self.gm.get_submodule(p) for k, p in self.gm.meta["archir_arch"].items()}

    def probs(self) -> dict[str, torch.Tensor]:
        """Decision key -> ``softmax(logits)`` (detached)."""
        return {k: torch.softmax(s.logits.detach(), -1) for k, s in self.samplers().items()}

    def entropy(self) -> float:
        return categorical_entropy({k: s.logits for k, s in self.samplers().items()})

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"supernet": self.gm}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"w": self.w_opt, "arch": self.a_opt}

    def _loss(self, x: torch.Tensor, y: torch.Tensor, *, amp: bool = True) -> torch.Tensor:
        """The supernet's cross-entropy on ``(x, y)``, the forward under :meth:`autocast` unless ``amp=False``."""
        if not amp:
            return F.cross_entropy(self.gm(x), y)
        with self.autocast():
            out = self.gm(x)
        return F.cross_entropy(out.float(), y)

    def _weight_step(self, loss: torch.Tensor) -> None:
        self.w_opt.zero_grad(set_to_none=True)
        self.a_opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.options["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(self.weights, self.options["grad_clip"])
        self.w_opt.step()

    def _finish(self, total: torch.Tensor, count: int, **extra: float) -> dict:
        return {"loss": float(total) / max(1, count), "val_error": self.val_error(self.gm),
                "entropy": self.entropy(), **extra}


@register_oneshot
class DartsDriver(RelaxedDriver):
    """DARTS: softmax mixture, bilevel updates, first (``order=1``) or second order (see the module docstring)."""

    name = "darts"
    OPTIONS = {**RelaxedDriver.BASE_OPTIONS, "order": 1, "xi": 0.0}

    def __init__(self, space, dataset, config, seed: int = 0, **options) -> None:
        super().__init__(space, dataset, config, seed, **options)
        if self.options["order"] not in (1, 2) or isinstance(self.options["order"], bool):
            from search.strategies import StrategyError

            raise StrategyError(f"strategy 'darts': option order={self.options['order']!r} must be 1 or 2",
                                hint="--strategy-opt order=1 (first order) or order=2 (unrolled)")
        self._check_num("xi", 0.0)

    def step(self) -> dict:
        total, count = self.zeros(), 0
        for (xt, yt), (xv, yv) in zip(self.batches("train"), self.batches("val")):
            self.a_opt.zero_grad(set_to_none=True)
            if self.options["order"] == 2:
                grads = self._unrolled_arch_grads(xt, yt, xv, yv)
                for a, g in zip(self.alphas, grads):
                    a.grad = g
            else:
                lv = self._loss(xv, yv)
                grads = torch.autograd.grad(lv, self.alphas)
                for a, g in zip(self.alphas, grads):
                    a.grad = g
            self.a_opt.step()
            loss = self._loss(xt, yt)
            self._weight_step(loss)
            total += loss.detach().double() * len(yt)
            count += len(yt)
        return self._finish(total, count)

    def _unrolled_arch_grads(self, xt, yt, xv, yv) -> list[torch.Tensor]:
        """DARTS' second-order architecture gradient (eq. 7-8) at the current weights, in float32 whatever
        ``amp`` (its central differences at ``w +- eps * v`` are below bfloat16's rounding)."""
        xi = self.options["xi"] or self.options["w_lr"]
        wd = self.options["w_decay"]
        w = self.weights
        backup = [p.detach().clone() for p in w]
        gw = torch.autograd.grad(self._loss(xt, yt, amp=False), w, allow_unused=True)
        with torch.no_grad():  # w' = w - xi * (grad + wd * w)
            for p, g in zip(w, gw):
                p.sub_(xi * ((0 if g is None else g) + wd * p))
        lv = self._loss(xv, yv, amp=False)
        g_all = torch.autograd.grad(lv, self.alphas + w, allow_unused=True)
        g_alpha = [torch.zeros_like(a) if g is None else g for a, g in zip(self.alphas, g_all[:len(self.alphas)])]
        v = [torch.zeros_like(p) if g is None else g for p, g in zip(w, g_all[len(self.alphas):])]
        eps = 0.01 / float(torch.sqrt(sum((g * g).sum() for g in v)).clamp_min(1e-12))

        def alpha_grad_at(sign: float) -> list[torch.Tensor]:
            with torch.no_grad():
                for p, b, g in zip(w, backup, v):
                    p.copy_(b + sign * eps * g)
            gs = torch.autograd.grad(self._loss(xt, yt, amp=False), self.alphas, allow_unused=True)
            return [torch.zeros_like(a) if g is None else g for a, g in zip(self.alphas, gs)]

        g_plus = alpha_grad_at(1.0)
        g_minus = alpha_grad_at(-1.0)
        with torch.no_grad():
            for p, b in zip(w, backup):
                p.copy_(b)
        return [ga - xi * (gp - gm) / (2 * eps) for ga, gp, gm in zip(g_alpha, g_plus, g_minus)]

    def derive(self) -> dict:
        return decisions_from_probs(self.space, self.supernet, {k: p.cpu().numpy() for k, p in self.probs().items()})
