"""An LSTM controller over a space's categorical variables (Zoph & Le 2017; Pham et al. 2018).

The controller reads a search space as the fixed sequence of categorical variables
``space.variables() -> [(name, n_options), ...]`` and emits one option index per variable,
autoregressively::

    x_0 = g (a learned start embedding)
    h_t, c_t = LSTMCell(x_t, (h_{t-1}, c_{t-1}))
    logits_t = tanh_constant * tanh(W_t h_t / temperature)       (W_t: one linear head per variable)
    a_t ~ softmax(logits_t);  x_{t+1} = E_t[a_t]                   (E_t: one embedding per variable)

``sample()`` returns ``(choices, log_prob, entropy)``: the indices, the sum of their
log-probabilities and the sum of the per-step entropies (tensors with gradients).
``space.from_choices(choices)`` turns the indices into decisions.

REINFORCE (Williams 1992) with a moving-average baseline and an entropy bonus::

    advantage_i = R_i - b
    loss = -mean_i(advantage_i * log p(a_i)) - entropy_weight * mean_i(H_i)
    b <- decay * b + (1 - decay) * R_i              (for each reward, after the loss is formed)

The baseline starts at the first batch's mean reward (an untrained controller's first update
is then driven by the spread of the rewards, not by their offset). The update uses Adam and
clips the gradient norm. ``update`` re-scores the sampled choices (teacher forcing), so the
samples may come from a ``torch.no_grad()`` ``sample`` (as the ask/tell strategy does).

Determinism: the only randomness is one ``torch.Generator`` seeded by ``seed`` (the weights'
initialisation -- uniform in +-``init_range`` as in ENAS -- and every draw); every controller
computation runs with one intra-op thread, so the same seed and the same calls give the same
samples and bit-identical weights on CPU, whatever torch's thread setting is.

State: ``state() -> (meta, tensors)`` -- a JSON-able dict (options, baseline, counters) and
named tensors (weights, Adam moments, the generator's state); ``load_state`` restores it
exactly; ``save(path)`` / ``Controller.load(path)`` write / read one safetensors file with the
JSON in its metadata (never pickle).

Example:
    >>> from search.spaces import get_space
    >>> space = get_space("chain", input_shape=(1, 8, 8), num_classes=10)
    >>> ctl = Controller(space.variables(), seed=0)
    >>> choices, log_prob, entropy = ctl.sample()
    >>> d = space.from_choices(choices)
    >>> stats = ctl.update([choices], [0.9])
    >>> sorted(stats)
    ['advantage', 'baseline', 'entropy', 'loss', 'reward']
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from archir.errors import ArchirError

__all__ = ["Controller", "ControllerSample", "ControllerError", "STATE_FORMAT"]

STATE_FORMAT = "archir.controller"
STATE_VERSION = 1


class ControllerError(ArchirError, ValueError):
    """Bad controller options, choices, rewards or a state that does not fit.

    Attributes:
        hint: how to fix it (one line); ``message``, ``where`` and the rest as for
            :class:`archir.ArchirError` (``where=``/``file=``/``candidate=`` are accepted too).
    """

    def __init__(self, message: str, hint: str | None = None, **where: Any) -> None:
        super().__init__(message, hint=hint, **where)


class ControllerSample(NamedTuple):
    """One architecture drawn by :meth:`Controller.sample`."""

    choices: list[int]
    log_prob: torch.Tensor
    entropy: torch.Tensor


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run the controller's (tiny) computations on one intra-op thread: results independent of the setting."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _check_variables(variables: Any) -> list[tuple[str, int]]:
    try:
        out = [(str(name), int(n)) for name, n in variables]
    except (TypeError, ValueError):
        raise ControllerError(f"variables must be a list of (name, number of options), got {variables!r:.80}",
                              hint="pass space.variables()") from None
    if not out:
        raise ControllerError("the space has no variables: nothing to control", hint="pass space.variables()")
    for name, n in out:
        if n < 1:
            raise ControllerError(f"variable {name!r} has {n} options", hint="every variable needs >= 1 option")
    return out


class Controller(nn.Module):
    """The LSTM controller (see the module docstring).

    Args:
        variables: ``space.variables()``: ``(name, number of options)`` per decision, in order.
        seed: seeds the weights and every draw.
        hidden: LSTM hidden size (and embedding size).
        lr: Adam learning rate of the REINFORCE update.
        baseline_decay: the moving average's decay (ENAS: 0.99; small runs want ~0.9).
        entropy_weight: weight of the entropy bonus.
        tanh_constant: logits are ``tanh_constant * tanh(.)`` (ENAS; keeps exploring); ``None``: raw logits.
        temperature: divides the logits before the tanh.
        grad_clip: gradient norm clip of the update (``None``: none).
        init_range: weights start uniform in ``[-init_range, init_range]``.

    Raises:
        ControllerError: bad variables or options.
    """

    OPTIONS: dict[str, Any] = {"hidden": 32, "lr": 0.005, "baseline_decay": 0.9, "entropy_weight": 1e-3,
                               "tanh_constant": 1.5, "temperature": 1.0, "grad_clip": 5.0, "init_range": 0.1}

    def __init__(self, variables: Sequence[tuple[str, int]], seed: int = 0, **options: Any) -> None:
        super().__init__()
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            raise ControllerError(f"unknown controller option(s) {unknown}",
                                  hint=f"its options are {sorted(self.OPTIONS)}")
        opts = {**self.OPTIONS, **options}
        _check_options(opts)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ControllerError(f"seed must be an int >= 0, got {seed!r}", hint="pass seed=0")
        self.variables = _check_variables(variables)
        self.options = opts
        self.seed = int(seed)
        h = int(opts["hidden"])
        self.start = nn.Parameter(torch.zeros(1, h))
        self.lstm = nn.LSTMCell(h, h)
        self.heads = nn.ModuleList(nn.Linear(h, n) for _, n in self.variables)
        self.embeds = nn.ModuleList(nn.Embedding(n, h) for _, n in self.variables)
        self.generator = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            r = float(opts["init_range"])
            for p in self.parameters():  # explicit, seeded init: never torch's global RNG
                p.copy_(torch.rand(p.shape, generator=self.generator) * 2 * r - r)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=float(opts["lr"]))
        self.baseline: float | None = None
        self.updates = 0
        self.samples = 0

    # ---------------------------------------------------------------- sampling

    def _logits(self, h: torch.Tensor, t: int) -> torch.Tensor:
        z = self.heads[t](h).squeeze(0) / float(self.options["temperature"])
        c = self.options["tanh_constant"]
        return z if c is None else float(c) * torch.tanh(z)

    def _run(self, forced: Sequence[int] | None) -> ControllerSample:
        h = torch.zeros_like(self.start)
        c = torch.zeros_like(self.start)
        x = self.start
        out: list[int] = []
        logp = torch.zeros(())
        ent = torch.zeros(())
        for t, (_, n) in enumerate(self.variables):
            h, c = self.lstm(x, (h, c))
            logits = self._logits(h, t)
            log_probs = F.log_softmax(logits, dim=-1)
            if forced is None:
                a = int(torch.multinomial(log_probs.detach().exp(), 1, generator=self.generator))
            else:
                a = int(forced[t])
            out.append(a)
            logp = logp + log_probs[a]
            ent = ent - (log_probs.exp() * log_probs).sum()
            x = self.embeds[t](torch.tensor([a]))
        return ControllerSample(out, logp, ent)

    def sample(self) -> ControllerSample:
        """Draw one architecture: ``(choices, log_prob, entropy)`` (tensors carry gradients unless under no_grad).

        Example:
            >>> choices, log_prob, entropy = ctl.sample()      # doctest: +SKIP
        """
        with _one_thread():
            s = self._run(None)
        self.samples += 1
        return s

    def log_prob(self, choices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log p(choices), entropy)`` of given choices (teacher forcing; with gradients).

        Raises:
            ControllerError: wrong length or an index out of range.
        """
        ch = self._check_choices(choices)
        with _one_thread():
            s = self._run(ch)
        return s.log_prob, s.entropy

    def probabilities(self, choices: Sequence[int] | None = None) -> list[list[float]]:
        """Per variable, the option probabilities along ``choices`` (default: along the argmax path)."""
        ch = None if choices is None else self._check_choices(choices)
        out = []
        with torch.no_grad(), _one_thread():
            h = torch.zeros_like(self.start)
            c = torch.zeros_like(self.start)
            x = self.start
            for t in range(len(self.variables)):
                h, c = self.lstm(x, (h, c))
                p = F.softmax(self._logits(h, t), dim=-1)
                out.append([float(v) for v in p])
                a = int(torch.argmax(p)) if ch is None else ch[t]
                x = self.embeds[t](torch.tensor([a]))
        return out

    def most_likely(self) -> list[int]:
        """The greedy (argmax at every step) architecture: ENAS' derivation without sampling."""
        return [max(range(len(p)), key=p.__getitem__) for p in self.probabilities()]

    # ---------------------------------------------------------------- REINFORCE

    def update(self, choices: Sequence[Sequence[int]], rewards: Sequence[float]) -> dict[str, float]:
        """One REINFORCE step on a batch of sampled architectures and their rewards (higher is better).

        Args:
            choices: the sampled choices (one list per architecture).
            rewards: one finite reward each.

        Returns:
            ``loss``, ``reward`` (mean), ``baseline`` (after the update), ``advantage`` (mean),
            ``entropy`` (mean, nats).

        Raises:
            ControllerError: no samples, mismatched lengths, a non-finite reward, bad choices.
        """
        chs = [self._check_choices(c) for c in choices]
        rs = [float(r) for r in rewards]
        if not chs or len(chs) != len(rs):
            raise ControllerError(f"update needs one reward per sample, got {len(chs)} samples and {len(rs)} rewards",
                                  hint="pass equally long non-empty lists")
        bad = [r for r in rs if not math.isfinite(r)]
        if bad:
            raise ControllerError(f"rewards must be finite, got {bad[0]}", hint="drop failed children before updating")
        if self.baseline is None:
            self.baseline = sum(rs) / len(rs)
        b = self.baseline
        with _one_thread():
            loss = torch.zeros(())
            ents = []
            for ch, r in zip(chs, rs):
                s = self._run(ch)
                loss = loss - (r - b) * s.log_prob - float(self.options["entropy_weight"]) * s.entropy
                ents.append(float(s.entropy.detach()))
            loss = loss / len(chs)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.options["grad_clip"] is not None:
                nn.utils.clip_grad_norm_(self.parameters(), float(self.options["grad_clip"]))
            self.optimizer.step()
        d = float(self.options["baseline_decay"])
        for r in rs:
            self.baseline = d * self.baseline + (1 - d) * r
        self.updates += 1
        return {"loss": float(loss.detach()), "reward": sum(rs) / len(rs), "baseline": float(self.baseline),
                "advantage": sum(r - b for r in rs) / len(rs), "entropy": sum(ents) / len(ents)}

    # ---------------------------------------------------------------- state

    def state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """``(meta, tensors)``: JSON-able options/baseline/counters and the weights, Adam state and RNG state."""
        tensors = {f"param.{k}": v.detach().clone().contiguous() for k, v in self.state_dict().items()}
        names = {id(p): n for n, p in self.named_parameters()}
        opt_meta = {}
        for p, st in self.optimizer.state.items():
            n = names[id(p)]
            for k, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"adam.{n}.{k}"] = v.detach().clone().contiguous()
                else:
                    opt_meta[f"{n}.{k}"] = v
        tensors["rng"] = self.generator.get_state().clone()
        meta = {"format": STATE_FORMAT, "version": STATE_VERSION, "variables": [list(v) for v in self.variables],
                "options": dict(self.options), "seed": self.seed, "baseline": self.baseline,
                "updates": self.updates, "samples": self.samples, "adam": opt_meta}
        return json.loads(json.dumps(meta)), tensors

    def load_state(self, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> "Controller":
        """Restore :meth:`state` (the same variables are required). Returns ``self``.

        Raises:
            ControllerError: another format, other variables, or missing/misshapen tensors.
        """
        if meta.get("format") != STATE_FORMAT:
            raise ControllerError(f"not a controller state (format {meta.get('format')!r})",
                                  hint="pass what Controller.state() / save() wrote")
        if [tuple(v) for v in meta.get("variables", [])] != [tuple(v) for v in self.variables]:
            raise ControllerError("the state's variables differ from this controller's (another space?)",
                                  hint="build the controller on the space the state was saved from")
        if dict(meta.get("options", {})) != dict(self.options):
            raise ControllerError(f"the state's options {meta.get('options')} differ from {self.options}",
                                  hint="build the controller with the saved options (Controller.load does)")
        want = {f"param.{k}": v.shape for k, v in self.state_dict().items()}
        missing = sorted(k for k in want if k not in tensors)
        if missing or "rng" not in tensors:
            raise ControllerError(f"the state lacks tensors {(missing + ['rng'])[:3]}", hint="the file is incomplete")
        for k, shape in want.items():
            if tuple(tensors[k].shape) != tuple(shape):
                raise ControllerError(f"tensor {k} has shape {tuple(tensors[k].shape)}, expected {tuple(shape)}",
                                      hint="the state belongs to another controller")
        self.load_state_dict({k[len("param."):]: tensors[k] for k in want})
        params = dict(self.named_parameters())
        self.optimizer = torch.optim.Adam(self.parameters(), lr=float(self.options["lr"]))
        adam = dict(meta.get("adam", {}))
        for n, p in params.items():
            st = {k.split(".")[-1]: v.clone() for k, v in tensors.items()
                  if k.startswith(f"adam.{n}.") and k.count(".") == n.count(".") + 2}
            st.update({k[len(n) + 1:]: v for k, v in adam.items() if k.startswith(n + ".")
                       and k.count(".") == n.count(".") + 1})
            if st:
                self.optimizer.state[p] = st
        self.generator.set_state(tensors["rng"].clone())
        self.seed = int(meta["seed"])
        self.baseline = None if meta.get("baseline") is None else float(meta["baseline"])
        self.updates, self.samples = int(meta.get("updates", 0)), int(meta.get("samples", 0))
        return self

    def to_bytes(self) -> bytes:
        """The state as safetensors bytes (the JSON meta in the header's metadata)."""
        from safetensors.torch import save

        meta, tensors = self.state()
        return save(tensors, metadata={"archir.controller": json.dumps(meta, sort_keys=True)})

    def save(self, path: str | os.PathLike) -> Path:
        """Write the state to one safetensors file, atomically (a failed write leaves the old file)."""
        from archir.serialize import atomic_write

        p = Path(path)
        atomic_write(p, self.to_bytes())
        return p

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "<bytes>") -> "Controller":
        """A controller restored from :meth:`to_bytes` output."""
        from safetensors.torch import load

        try:
            tensors = load(data)
            meta_text = _header_metadata(data).get("archir.controller")
        except Exception as e:  # a truncated / foreign file: say which
            raise ControllerError(f"{where}: not a readable safetensors controller state ({type(e).__name__}: {e})",
                                  hint="pass a file written by Controller.save") from None
        if meta_text is None:
            raise ControllerError(f"{where}: the safetensors file carries no controller metadata",
                                  hint="pass a file written by Controller.save")
        meta = json.loads(meta_text)
        ctl = cls([tuple(v) for v in meta["variables"]], seed=int(meta["seed"]), **meta["options"])
        return ctl.load_state(meta, tensors)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Controller":
        """A controller restored from :meth:`save`'s file.

        Raises:
            ControllerError: the file is missing or is not a controller state.
        """
        p = Path(path)
        if not p.is_file():
            raise ControllerError(f"{p}: no such file", hint="pass a file written by Controller.save")
        return cls.from_bytes(p.read_bytes(), where=str(p))

    # ---------------------------------------------------------------- helpers

    def _check_choices(self, choices: Sequence[int]) -> list[int]:
        try:
            ch = [int(c) for c in choices]
        except (TypeError, ValueError):
            raise ControllerError(f"choices must be a list of ints, got {choices!r:.80}") from None
        if len(ch) != len(self.variables):
            raise ControllerError(f"expected {len(self.variables)} choices, got {len(ch)}",
                                  hint="one option index per space.variables() entry")
        for (name, n), c in zip(self.variables, ch):
            if not 0 <= c < n:
                raise ControllerError(f"choice {c} of variable {name!r} is out of range 0..{n - 1}")
        return ch

    def extra_repr(self) -> str:
        return f"variables={len(self.variables)}, hidden={self.options['hidden']}, seed={self.seed}"


def _check_options(o: Mapping[str, Any]) -> None:
    def pos(k: str, integer: bool = False) -> None:
        v = o[k]
        ok = not isinstance(v, bool) and isinstance(v, int if integer else (int, float)) and v > 0 and math.isfinite(v)
        if not ok:
            raise ControllerError(f"controller option {k} must be a positive {'int' if integer else 'number'}, "
                                  f"got {v!r}", hint=f"e.g. {k}={Controller.OPTIONS[k]}")

    pos("hidden", integer=True)
    pos("lr")
    pos("temperature")
    pos("init_range")
    d = o["baseline_decay"]
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d < 1:
        raise ControllerError(f"baseline_decay must be in [0, 1), got {d!r}", hint="e.g. baseline_decay=0.9")
    e = o["entropy_weight"]
    if isinstance(e, bool) or not isinstance(e, (int, float)) or not (e >= 0 and math.isfinite(e)):
        raise ControllerError(f"entropy_weight must be a finite number >= 0, got {e!r}", hint="e.g. 1e-3")
    for k in ("tanh_constant", "grad_clip"):
        if o[k] is not None:
            pos(k)


def _header_metadata(data: bytes) -> dict:
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or n > len(data) - 8:
        raise ValueError("bad header length")
    return json.loads(data[8:8 + n]).get("__metadata__", {}) or {}
