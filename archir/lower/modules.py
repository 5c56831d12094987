"""Modules and functions that lowered fx graphs call.

They live in an importable module so that a ``GraphModule``'s generated code can name
them, and so that ``torch.fx`` symbolic tracing of a lowered module sees plain calls.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Scale", "LayerNorm2d", "LearnedTensor", "SelfAttention", "RelPosAttention", "DropPath", "ArchSampler", "ChoiceModule", "zero",
           "stop_forward", "CHOICE_MODES"]
__all__ += ["WindowAttention", "WindowAttentionV2"]  # swin

CHOICE_MODES = ("softmax", "gumbel", "sample", "fixed")


def zero(x: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Zeros shaped like ``x[:, :, ::stride, ::stride]`` (DARTS' ``none`` op; 0 * x keeps the graph)."""
    if stride == 1:
        return x.mul(0.0)
    return x[:, :, ::stride, ::stride].mul(0.0)


def stop_forward(x: torch.Tensor) -> torch.Tensor:
    """``x - x.detach()``: zero in the forward pass, identity in the backward pass (Petridish)."""
    return x - x.detach()


class Scale(nn.Module):
    """Learnable per-channel multiply: ``y = x * weight`` broadcast over the dims after the channel."""

    def __init__(self, channels: int, device=None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view((-1,) + (1,) * (x.dim() - 2))


class LayerNorm2d(nn.LayerNorm):
    """Layer norm over the channels of an ``(N, C, H, W)`` map at every position, computed as
    torchvision's ConvNeXt ``LayerNorm2d`` does (permute to channels-last, ``F.layer_norm``, permute
    back), so the two agree bit for bit."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class LearnedTensor(nn.Module):
    """The ``param`` op: a learned tensor ``value`` of per-sample shape, repeated over the batch of ``ref``
    (whose values are not read): ``value.expand(ref.shape[0], *value.shape)``, exactly ``(N, *shape)``."""

    def __init__(self, shape, device=None) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.zeros(tuple(shape), device=device))

    def forward(self, ref: torch.Tensor) -> torch.Tensor:
        return self.value.unsqueeze(0).expand(ref.shape[0], *self.value.shape)


class SelfAttention(nn.Module):
    """The ``attention`` op: multi-head self-attention on ``(N, L, E)`` tokens, computed as
    ``nn.MultiheadAttention(E, num_heads, batch_first=True)(x, x, x, need_weights=False)[0]`` (the same
    parameters under flat names: ``in_proj_weight``, ``in_proj_bias``, ``out_proj_weight``,
    ``out_proj_bias``); ``dropout`` drops attention weights in training mode only."""

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = True, dropout: float = 0.0, device=None) -> None:
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        e = embed_dim
        self.in_proj_weight = nn.Parameter(torch.zeros(3 * e, e, device=device))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * e, device=device)) if bias else None
        self.out_proj_weight = nn.Parameter(torch.zeros(e, e, device=device))
        self.out_proj_bias = nn.Parameter(torch.zeros(e, device=device)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, e = x.shape
        h = self.num_heads
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(n, length, h, e // h).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return F.linear(y.transpose(1, 2).reshape(n, length, e), self.out_proj_weight, self.out_proj_bias)

    def extra_repr(self) -> str:
        return f"embed_dim={self.in_proj_weight.shape[1]}, num_heads={self.num_heads}, dropout={self.dropout}"


# ---- maxvit


class RelPosAttention(nn.Module):
    """The ``rel_attention`` op: multi-head self-attention within windows with a learned relative-position bias
    on ``(N, G, P, E)`` samples, computed step for step as torchvision's MaxViT
    ``RelativePositionalMultiHeadAttention`` (``to_qkv``, ``chunk``, heads, ``k * scale``, ``einsum``, the bias
    gathered from ``bias_table`` by ``relative_position_index``, softmax, ``einsum``, ``merge``) under flat
    names: ``qkv_weight``, ``qkv_bias``, ``merge_weight``, ``merge_bias``, ``bias_table``. The index is a
    non-persistent buffer rebuilt from the window size."""

    def __init__(self, embed_dim: int, num_heads: int, window: tuple[int, int], scale: float, device=None) -> None:
        super().__init__()
        from archir.ops import relative_position_index

        e, (h, w) = embed_dim, window
        self.num_heads, self.window, self.scale = num_heads, (h, w), float(scale)
        self.qkv_weight = nn.Parameter(torch.zeros(3 * e, e, device=device))
        self.qkv_bias = nn.Parameter(torch.zeros(3 * e, device=device))
        self.merge_weight = nn.Parameter(torch.zeros(e, e, device=device))
        self.merge_bias = nn.Parameter(torch.zeros(e, device=device))
        self.bias_table = nn.Parameter(torch.zeros((2 * h - 1) * (2 * w - 1), num_heads, device=device))
        # an index, not a weight: real even when the weights are made on the meta device (to be assigned next)
        idx = torch.from_numpy(relative_position_index(h, w))
        self.register_buffer("relative_position_index", idx if str(device) == "meta" else idx.to(device),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, g, p, e = x.shape
        h = self.num_heads
        q, k, v = F.linear(x, self.qkv_weight, self.qkv_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(n, g, p, h, e // h).permute(0, 1, 3, 2, 4) for t in (q, k, v))
        k = k * self.scale
        scores = torch.einsum("B G H I D, B G H J D -> B G H I J", q, k)
        bias = self.bias_table[self.relative_position_index.view(-1)].view(p, p, -1).permute(2, 0, 1)
        weights = F.softmax(scores + bias.unsqueeze(0), dim=-1)
        y = torch.einsum("B G H I J, B G H J D -> B G H I D", weights, v)
        return F.linear(y.permute(0, 1, 3, 2, 4).reshape(n, g, p, e), self.merge_weight, self.merge_bias)

    def extra_repr(self) -> str:
        return (f"embed_dim={self.qkv_weight.shape[1]}, num_heads={self.num_heads}, window={self.window}, "
                f"scale={self.scale}")


# ---- swin


class WindowAttention(nn.Module):
    """The ``window_attention`` op (swin): shifted-window multi-head self-attention on ``(N, H, W, C)`` maps, computed
    step for step as torchvision's ``shifted_window_attention`` (Swin V1) without importing torchvision: zero-pad
    to multiples of the window, roll by ``-shift``, cut ``(N, nW, T, C)`` windows (the windows get their own axis;
    the batch is never folded), ``q * d**-0.5 @ k^T + table[index] (+ mask)``, softmax, ``@ v``, the projection,
    undo the windows, roll back, crop. Parameters under the op's names (``qkv_weight``, ``qkv_bias``,
    ``proj_weight``, ``proj_bias``, ``relative_position_bias_table``); the relative position index and the shift
    mask are rebuilt from the attrs and the input size (``archir.ops.relative_position_index`` /
    ``window_shift_mask``) and kept per size and device, not as buffers."""

    def __init__(self, dim: int, window_size, shift_size, num_heads: int, qkv_bias: bool = True,
                 proj_bias: bool = True, attention_dropout: float = 0.0, dropout: float = 0.0, device=None) -> None:
        super().__init__()
        self.window_size, self.shift_size = [int(v) for v in window_size], [int(v) for v in shift_size]
        self.num_heads, self.attention_dropout, self.dropout = int(num_heads), float(attention_dropout), float(dropout)
        wh, ww = self.window_size
        self.qkv_weight = nn.Parameter(torch.zeros(3 * dim, dim, device=device))
        self.qkv_bias = nn.Parameter(torch.zeros(3 * dim, device=device)) if qkv_bias else None
        self.proj_weight = nn.Parameter(torch.zeros(dim, dim, device=device))
        self.proj_bias = nn.Parameter(torch.zeros(dim, device=device)) if proj_bias else None
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads, device=device))
        self._consts: dict = {}

    def _geometry(self, h: int, w: int, c: int, device, dtype):
        from archir.ops import window_attention_dims, relative_position_index, window_shift_mask
        from archir.types import TensorType

        key = (h, w, c, str(device), dtype)
        if key not in self._consts:
            d = window_attention_dims({"window_size": self.window_size, "shift_size": self.shift_size,
                                       "num_heads": self.num_heads}, TensorType((h, w, c)))
            mask = window_shift_mask(d)
            self._consts[key] = (d, torch.as_tensor(relative_position_index(d.wh, d.ww).reshape(-1), device=device),
                                 None if mask is None else torch.as_tensor(mask, dtype=dtype, device=device)[
                                     None, :, None])
        return self._consts[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h, w, c = x.shape
        d, index, mask = self._geometry(h, w, c, x.device, x.dtype)
        x = F.pad(x, (0, 0, 0, d.wp - w, 0, d.hp - h))
        if d.sh or d.sw:
            x = torch.roll(x, shifts=(-d.sh, -d.sw), dims=(1, 2))
        nh, nw = d.hp // d.wh, d.wp // d.ww
        x = x.reshape(n, nh, d.wh, nw, d.ww, c).permute(0, 1, 3, 2, 4, 5).reshape(n, d.windows, d.tokens, c)
        qkv = F.linear(x, self.qkv_weight, self._qkv_bias()).reshape(n, d.windows, d.tokens, 3, d.heads,
                                                                      d.head_dim)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5)  # each (N, nW, heads, T, d)
        attn = self._logits(q, k, d)
        attn = attn + self._position_bias(index, d)
        if mask is not None:
            attn = attn + mask
        attn = F.softmax(attn, dim=-1)
        attn = F.dropout(attn, p=self.attention_dropout, training=self.training)
        y = attn.matmul(v).transpose(2, 3).reshape(n, d.windows, d.tokens, c)
        y = F.linear(y, self.proj_weight, self.proj_bias)
        y = F.dropout(y, p=self.dropout, training=self.training)
        y = y.reshape(n, nh, nw, d.wh, d.ww, c).permute(0, 1, 3, 2, 4, 5).reshape(n, d.hp, d.wp, c)
        if d.sh or d.sw:
            y = torch.roll(y, shifts=(d.sh, d.sw), dims=(1, 2))
        return y[:, :h, :w].contiguous()

    def _qkv_bias(self):
        return self.qkv_bias

    def _logits(self, q: torch.Tensor, k: torch.Tensor, d) -> torch.Tensor:
        return (q * d.head_dim ** -0.5).matmul(k.transpose(-2, -1))

    def _position_bias(self, index: torch.Tensor, d) -> torch.Tensor:
        return self.relative_position_bias_table[index].view(d.tokens, d.tokens, d.heads).permute(2, 0, 1)

    def extra_repr(self) -> str:
        return (f"dim={self.proj_weight.shape[0]}, window_size={self.window_size}, shift_size={self.shift_size}, "
                f"num_heads={self.num_heads}")


class WindowAttentionV2(WindowAttention):
    """The ``window_attention_v2`` op (Swin V2): :class:`WindowAttention`'s windows with torchvision's V2 scores,
    step for step as ``shifted_window_attention(..., logit_scale=...)``: the k third of ``qkv_bias`` zeroed,
    cosine scores ``normalize(q) @ normalize(k)^T * exp(clamp(logit_scale, max=log 100))``, and the position
    bias ``16 * sigmoid(cpb_mlp(coords table)[index])`` with ``cpb_mlp = fc2(relu(fc1(.)))`` (parameters
    ``logit_scale``, ``cpb_fc1_weight``, ``cpb_fc1_bias``, ``cpb_fc2_weight``; the coordinate table is rebuilt by
    ``archir.ops.window_coords_table``)."""

    def __init__(self, dim: int, window_size, shift_size, num_heads: int, qkv_bias: bool = True,
                 proj_bias: bool = True, cpb_hidden: int = 512, attention_dropout: float = 0.0, dropout: float = 0.0,
                 device=None) -> None:
        super().__init__(dim, window_size, shift_size, num_heads, qkv_bias, proj_bias, attention_dropout, dropout,
                         device)
        del self.relative_position_bias_table
        self.logit_scale = nn.Parameter(torch.zeros(num_heads, 1, 1, device=device))
        self.cpb_fc1_weight = nn.Parameter(torch.zeros(cpb_hidden, 2, device=device))
        self.cpb_fc1_bias = nn.Parameter(torch.zeros(cpb_hidden, device=device))
        self.cpb_fc2_weight = nn.Parameter(torch.zeros(num_heads, cpb_hidden, device=device))

    def _qkv_bias(self):
        if self.qkv_bias is None:
            return None
        b = self.qkv_bias.clone()
        third = b.numel() // 3
        b[third:2 * third].zero_()
        return b

    def _logits(self, q: torch.Tensor, k: torch.Tensor, d) -> torch.Tensor:
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        return attn * torch.clamp(self.logit_scale, max=math.log(100.0)).exp()

    def _position_bias(self, index: torch.Tensor, d) -> torch.Tensor:
        from archir.ops import window_coords_table

        w1 = self.cpb_fc1_weight
        key = ("coords", d.wh, d.ww, str(w1.device), w1.dtype)
        if key not in self._consts:  # float32 values, in the weights' dtype (float64 under check_preserved)
            self._consts[key] = torch.as_tensor(window_coords_table(d.wh, d.ww), device=w1.device).to(w1.dtype)[None]
        table = F.linear(F.relu(F.linear(self._consts[key], self.cpb_fc1_weight, self.cpb_fc1_bias)),
                         self.cpb_fc2_weight).view(-1, d.heads)
        return 16 * torch.sigmoid(table[index].view(d.tokens, d.tokens, d.heads).permute(2, 0, 1))


class DropPath(nn.Module):
    """Drop-path as in the DARTS reference: whole samples dropped in training, identity in eval.

    In training mode, with ``rate = p * scale``: ``mask = bernoulli(1 - rate)`` of shape ``(N, 1, ...,
    1)`` (one draw per sample, from torch's default generator, drawn as the reference draws it) and
    ``y = x / (1 - rate) * mask``, so ``E[y] = x``. ``scale`` (0..1, default 1) is the ramp a trainer sets per epoch (DARTS:
    ``drop_prob = p_max * epoch / epochs``) with :func:`archir.lower.set_drop_path`; a rate of 0
    draws nothing. In eval mode ``y = x``.
    """

    def __init__(self, p: float, scale: float = 1.0) -> None:
        super().__init__()
        self.p = float(p)
        self.scale = float(scale)

    @property
    def rate(self) -> float:
        """The drop probability in use: ``p * scale``."""
        return self.p * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rate = self.p * self.scale
        if not self.training or rate <= 0.0:
            return x
        keep = 1.0 - rate
        # the reference's draw: FloatTensor(N, 1, 1, 1).bernoulli_(keep_prob)
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x / keep * mask

    def extra_repr(self) -> str:
        return f"p={self.p}, scale={self.scale}"


class ArchSampler(nn.Module):
    """Holds one decision's architecture logits and turns them into candidate weights.

    Modes (``self.mode``): ``softmax`` (DARTS mixture), ``gumbel`` (SNAS, relaxed with
    temperature ``self.tau``; ``self.hard`` for straight-through one-hot), ``sample`` (draw
    one candidate per forward from softmax(logits): ENAS/PARSEC), ``fixed`` (always
    candidate ``self.index``). Choice nodes tied to one decision share one sampler, so
    they make the same draw in a forward pass. ``self.last_index`` records the last draw.
    """

    def __init__(self, logits: torch.Tensor, mode: str, index: int | None = None, tau: float = 1.0,
                 hard: bool = False) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits)
        self.mode = mode
        self.tau = tau
        self.hard = hard
        self.index = int(torch.argmax(logits)) if index is None else int(index)
        self.last_index: int | None = None

    def forward(self) -> torch.Tensor:
        if self.mode == "softmax":
            return F.softmax(self.logits, dim=-1)
        if self.mode == "gumbel":
            return F.gumbel_softmax(self.logits, tau=self.tau, hard=self.hard)
        if self.mode == "sample":
            idx = int(torch.multinomial(F.softmax(self.logits.detach(), dim=-1), 1))
        else:
            idx = self.index
        self.last_index = idx
        return F.one_hot(torch.tensor(idx), self.logits.shape[0]).to(self.logits.dtype)

    def extra_repr(self) -> str:
        return f"candidates={self.logits.shape[0]}, mode={self.mode!r}"


class ChoiceModule(nn.Module):
    """Runs a choice node: a weighted sum over candidates, or only the chosen one.

    In ``sample``/``fixed`` mode only the chosen candidate runs, so memory is that of one
    sampled architecture (PARSEC, ENAS).
    """

    def __init__(self, candidates: list[nn.Module], names: list[str], single_path: bool) -> None:
        super().__init__()
        self.cands = nn.ModuleList(candidates)
        self.names = list(names)
        self.single_path = single_path

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.single_path:
            return self.cands[int(torch.argmax(w))](x)
        out = None
        for k, cand in enumerate(self.cands):
            y = w[k] * cand(x)
            out = y if out is None else out + y
        return out
