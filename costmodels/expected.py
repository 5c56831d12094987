"""``costmodels.expected_cost``: the differentiable expected cost of a supernet (SNAS eq. 16).

A supernet's cost under architecture probabilities is linear in the one-hot decisions: with
``Z_key`` the one-hot choice of decision ``key`` and ``c_{node,k}`` the cost of candidate ``k``'s
chain at choice node ``node``::

    cost(Z) = fixed + sum over choice nodes of sum_k Z_{key(node),k} * c_{node,k}

where ``fixed`` is the cost of every non-choice node. SNAS (Xie et al., 2019, eq. 16) uses
its expectation under the sampling distribution, ``E[cost] = cost(p)``: replace the one-hots by
the probabilities. The result is a torch scalar whose gradient reaches the architecture
logits through ``p`` (``p = softmax(logits)``, or Gumbel-softmax samples). For one-hot ``p`` it is
exactly the cost of the derived network (``archir.derive``): an empty candidate chain derives
to an ``identity``, which costs nothing in every source.

Cost sources (``cost=``):

- ``"macs"``, ``"flops"``: :func:`costmodels.op_cost` per op (:data:`COUNT_HANDLERS`), times
  ``batch_size``, the convention of :func:`costmodels.count`;
- ``"params"``: trainable parameters per the op schemas, as ``count`` reports them;
- ``"latency"``: ms from a :class:`~costmodels.LatencyTable` (``table=``), as
  :meth:`LatencyTable.estimate` adds them up (the call overhead once, in ``fixed``); missing
  entries are measured when the costs are built;
- a callable ``(op, attrs, input_types) -> float``: any per-op cost (``input`` nodes are not
  priced).

Per-candidate costs do not change during a search: build them once with
:func:`candidate_costs` and call :meth:`CandidateCosts.expected` every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping, Union

import numpy as np
import torch

from archir.choice import decision_keys
from archir.graph import Graph, arch_key
from archir.ops import candidate_steps, get_op
from archir.training import auxiliary_head
from costmodels.counts import count, op_cost

__all__ = ["expected_cost", "candidate_costs", "CandidateCosts", "arch_probs", "COST_SOURCES"]

#: The named cost sources; a callable is accepted too.
COST_SOURCES = ("macs", "flops", "params", "latency")

CostFn = Callable[[str, Mapping, list], float]
CostSpec = Union[str, CostFn]


@dataclass(frozen=True)
class CandidateCosts:
    """The per-candidate costs of a supernet: what :func:`expected_cost` weighs by probabilities.

    Attributes:
        cost: the cost source (``"macs"``, ... or the callable's name).
        fixed: the cost of the non-choice part.
        per_decision: decision key -> an array of K costs, candidate ``k``'s chain cost summed
            over every choice node of that decision (tied nodes share one decision).
        candidates: decision key -> candidate names, in order.

    Example:
        >>> cc = costmodels.candidate_costs(supernet, cost="macs")          # doctest: +SKIP
        >>> penalty = cc.expected(costmodels.arch_probs(gm))                # every step, cheap  # doctest: +SKIP
        >>> cc.of({"normal.n0.e0": "sep_conv_3x3", ...})                    # a derived network's cost  # doctest: +SKIP
    """

    cost: str
    fixed: float
    per_decision: Mapping[str, np.ndarray]
    candidates: Mapping[str, tuple[str, ...]]

    def expected(self, probs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``fixed + sum over decisions of probs[key] @ per_decision[key]``, a differentiable scalar.

        Args:
            probs: decision key -> a tensor of shape ``(K,)`` (any weights: they are not checked
                to sum to 1, so the expectation stays linear; use softmax or Gumbel-softmax
                outputs). Every decision needs one, and no other keys are allowed.

        Returns:
            A 0-d tensor with the dtype and device of the probabilities (float64 when the
            supernet has no decisions). Pass float64 probabilities where large counts must be
            exact (float32 holds integers exactly only up to 2**24).

        Raises:
            KeyError: a decision is missing or a key is unknown (the message lists them).
            ValueError: a probability vector has the wrong shape, is not floating point, or
                tensors sit on different devices.
        """
        if not isinstance(probs, Mapping):
            raise TypeError(f"expected_cost: probs must be a dict decision key -> tensor of shape (K,), got "
                            f"{type(probs).__name__}; build it with costmodels.arch_probs(module)")
        missing = [k for k in self.per_decision if k not in probs]
        unknown = [k for k in probs if k not in self.per_decision]
        if missing or unknown:
            raise KeyError(f"expected_cost: probs do not match the supernet's decisions: missing {missing}, unknown "
                           f"{unknown}; give one (K,) tensor per key of archir.decision_keys(supernet): "
                           f"{list(self.per_decision)}")
        tensors = {}
        for k, p in probs.items():
            if not isinstance(p, torch.Tensor):
                p = torch.as_tensor(np.asarray(p, np.float64))
            want = len(self.candidates[k])
            if p.shape != (want,):
                raise ValueError(f"expected_cost: probs[{k!r}] has shape {tuple(p.shape)}, decision {k!r} has {want} "
                                 f"candidates {list(self.candidates[k])}: give a tensor of shape ({want},)")
            if not p.is_floating_point():
                raise ValueError(f"expected_cost: probs[{k!r}] has dtype {p.dtype}; use a floating-point tensor")
            tensors[k] = p
        if not tensors:
            return torch.tensor(self.fixed, dtype=torch.float64)
        first = next(iter(tensors.values()))
        devices = {t.device for t in tensors.values()}
        if len(devices) > 1:
            raise ValueError(f"expected_cost: probability tensors sit on several devices {sorted(map(str, devices))}; "
                             "move them to one")
        dtype = first.dtype
        for t in tensors.values():
            dtype = torch.promote_types(dtype, t.dtype)
        total = torch.tensor(self.fixed, dtype=dtype, device=first.device)
        for k, p in tensors.items():
            c = torch.tensor(self.per_decision[k].tolist(), dtype=dtype, device=first.device)
            total = total + torch.dot(p.to(dtype), c)
        return total

    def of(self, decisions: Mapping[str, int | str]) -> float:
        """The cost of the network derived with ``decisions`` (key -> candidate index or name).

        Raises:
            KeyError: a decision is missing or unknown. ValueError: no such candidate.
        """
        missing = [k for k in self.per_decision if k not in decisions]
        unknown = [k for k in decisions if k not in self.per_decision]
        if missing or unknown:
            raise KeyError(f"CandidateCosts.of: missing decisions {missing}, unknown {unknown}")
        total = self.fixed
        for k, d in decisions.items():
            names = self.candidates[k]
            i = names.index(d) if isinstance(d, str) and d in names else d
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < len(names):
                raise ValueError(f"CandidateCosts.of: decision {k!r} = {d!r} is not a candidate; use an index "
                                 f"0..{len(names) - 1} or one of {list(names)}")
            total += float(self.per_decision[k][int(i)])
        return total


def _pricer(g: Graph, cost: CostSpec, table, batch_size: int):
    """A function ``(op, attrs, in_types, out_type) -> float`` for one op, and the fixed extra."""
    if callable(cost) and not isinstance(cost, str):
        def price(op, attrs, ins, out):
            v = cost(op, attrs, ins)
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise TypeError(f"expected_cost: the cost callable returned {v!r} for op {op!r}; it must return a "
                                "number") from None
            if not math.isfinite(v):
                raise ValueError(f"expected_cost: the cost callable returned {v} for op {op!r}; costs must be finite")
            return v

        return price, 0.0
    if cost in ("macs", "flops"):
        return (lambda op, attrs, ins, out: float(batch_size * getattr(op_cost(op, attrs, ins, out), cost))), 0.0
    if cost == "params":
        def params(op, attrs, ins, out):
            return float(sum(math.prod(s) for s in get_op(op).param_shapes(attrs, ins).values()))

        return params, 0.0
    if cost == "latency":
        from costmodels.table import LatencyTable

        if not isinstance(table, LatencyTable):
            raise ValueError("expected_cost(cost='latency') needs table=costmodels.LatencyTable(path, backend) "
                             f"(got {type(table).__name__ if table is not None else 'no table'})")
        if table.batch_size != batch_size:
            raise ValueError(f"expected_cost: the latency table measures batch {table.batch_size}, but batch_size="
                             f"{batch_size}; use a table of that batch size")
        over = table.overhead_ms

        def latency(op, attrs, ins, out):
            if get_op(op).traits.zero_cost:
                return 0.0
            return max(table.lookup(op, attrs, ins) - over, 0.0)

        return latency, over
    raise ValueError(f"expected_cost: unknown cost {cost!r}; use one of {list(COST_SOURCES)} or a callable "
                     "(op, attrs, input_types) -> float")


def candidate_costs(supernet: Graph, cost: CostSpec = "macs", *, table=None, batch_size: int = 1) -> CandidateCosts:
    """Price every candidate of every choice node of ``supernet``, and the fixed part.

    Args:
        supernet: a graph with choice nodes (a plain graph is allowed: it has only a fixed
            part). Weights are not needed. An auxiliary head (training only) is priced at
            nothing, as :func:`costmodels.count` leaves it out.
        cost: ``"macs"``, ``"flops"``, ``"params"``, ``"latency"`` (needs ``table``) or a callable
            ``(op, attrs, input_types) -> float`` (``input_types``: the op's input
            :class:`~archir.TensorType` s, batch excluded).
        table: a :class:`~costmodels.LatencyTable` for ``cost="latency"``.
        batch_size: the batch size of MACs/FLOPs (and of the table).

    Returns:
        A :class:`CandidateCosts`.

    Raises:
        ValueError: an unknown cost, ``"latency"`` without a table, a bad batch size.
        IRError: the graph is invalid.

    Example:
        >>> cc = costmodels.candidate_costs(supernet, "latency", table=table)   # doctest: +SKIP
        >>> cc.per_decision["normal.n0.e0"]        # ms of each candidate  # doctest: +SKIP
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"expected_cost: batch_size must be a positive int, got {batch_size!r}")
    supernet.validate(weights=False)
    price, fixed = _pricer(supernet, cost, table, int(batch_size))
    name = cost if isinstance(cost, str) else getattr(cost, "__name__", "callable")
    keys = decision_keys(supernet)
    per = {k: np.zeros(len(v), np.float64) for k, v in keys.items()}
    counted = count(supernet, batch_size=int(batch_size)) if cost in ("macs", "flops", "params") else None
    fixed_parts = [fixed]
    head = set(auxiliary_head(supernet))  # training only, left out as count() leaves it out
    for n in supernet.topo_order():
        node = supernet.node(n)
        if node.op == "input" or n in head:
            continue
        ins = supernet.input_types(n)
        if node.op != "choice":
            # the counts are count()'s own per-node figures, so one-hot results equal count(derive(...))
            fixed_parts.append(float(getattr(counted[n], cost)) if counted is not None
                               else price(node.op, node.attrs, ins, node.type))
            continue
        key = arch_key(n, node.attrs)
        for k, cand in enumerate(node.attrs["candidates"]):
            c = 0.0
            for st in candidate_steps(cand["ops"], ins[0], n):
                c += price(st.op, st.attrs, st.in_types, st.out)
            per[key][k] += c
    for v in per.values():
        v.setflags(write=False)
    return CandidateCosts(cost=name, fixed=math.fsum(fixed_parts), per_decision=MappingProxyType(per),
                          candidates=MappingProxyType({k: tuple(v) for k, v in keys.items()}))


def expected_cost(supernet: Graph, probs: Mapping[str, torch.Tensor], *, cost: CostSpec = "macs", table=None,
                  batch_size: int = 1) -> torch.Tensor:
    """The expected cost of ``supernet`` under per-decision probabilities, differentiable in them.

    ``fixed + sum over choice nodes of sum_k probs[key][k] * cost(candidate k's chain)``: linear
    in the one-hot decisions (SNAS eq. 16), so for one-hot ``probs`` it equals the cost of the
    derived network (e.g. ``count(archir.derive(supernet, decisions)).macs``). Builds the
    per-candidate costs on every call; in a training loop build them once with
    :func:`candidate_costs` and call ``.expected(probs)``.

    Args:
        supernet: a graph with choice nodes.
        probs: decision key (``archir.decision_keys(supernet)``) -> a tensor of shape ``(K,)``,
            e.g. ``costmodels.arch_probs(gm)`` for ``gm = to_fx(supernet, choice_mode="softmax")``.
        cost: ``"macs"`` (default), ``"flops"``, ``"params"``, ``"latency"`` (with ``table``), or a
            callable ``(op, attrs, input_types) -> float``.
        table: a :class:`~costmodels.LatencyTable` for ``cost="latency"``.
        batch_size: the batch size of MACs/FLOPs (and of the table).

    Returns:
        A 0-d tensor (dtype and device of ``probs``); ``.backward()`` reaches the logits.

    Raises:
        KeyError: ``probs`` lacks a decision or has an unknown key.
        ValueError: wrong shapes, unknown cost, ``"latency"`` without a table.
        IRError: the graph is invalid.

    Example:
        >>> gm = archir.lower.to_fx(supernet, choice_mode="softmax")                    # doctest: +SKIP
        >>> penalty = costmodels.expected_cost(supernet, costmodels.arch_probs(gm), cost="macs")   # doctest: +SKIP
        >>> (loss + 1e-9 * penalty).backward()    # reaches arch_parameters(gm)  # doctest: +SKIP
    """
    return candidate_costs(supernet, cost, table=table, batch_size=batch_size).expected(probs)


def arch_probs(module: torch.nn.Module, *, temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """Softmax probabilities of a lowered supernet's architecture logits, by decision key.

    Args:
        module: a GraphModule from ``archir.lower.to_fx(supernet, choice_mode=...)``.
        temperature: ``softmax(logits / temperature)``.

    Returns:
        Decision key -> probabilities of shape ``(K,)``, differentiable in the logits.

    Raises:
        ValueError: the module is not a lowered supernet, or a bad temperature.

    Example:
        >>> probs = costmodels.arch_probs(archir.lower.to_fx(supernet, choice_mode="softmax"))   # doctest: +SKIP
    """
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"arch_probs: temperature must be a positive number, got {temperature!r}")
    paths = (getattr(module, "meta", None) or {}).get("archir_arch")
    if paths is None:
        raise ValueError("arch_probs: module carries no architecture map (gm.meta['archir_arch']); pass the module "
                         "that archir.lower.to_fx(supernet, choice_mode=...) made")
    return {k: torch.softmax(module.get_submodule(p).logits / temperature, dim=-1) for k, p in paths.items()}
