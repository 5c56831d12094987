"""Seeded batch augmentation on the training device: random crop with padding, horizontal flip, cutout.

The standard CIFAR augmentation of the seed papers (DARTS, NASNet, PNAS), applied to a whole batch of
already standardised images at once (``(N, C, H, W)`` on any device):

- random crop with zero padding ``crop_padding`` (torchvision's ``RandomCrop(32, padding=4)``): the
  image is padded with the standardised value of a black pixel (``-mean / std`` per channel, so the
  padding is what padding the raw image with 0 gives), then an ``H x W`` window at a uniformly
  drawn offset in ``[0, 2 * padding]`` on each axis is kept;
- horizontal flip with probability 1/2;
- cutout (DeVries & Taylor; the DARTS reference's ``Cutout(16)``): a square of side ``cutout``
  centred at a uniformly drawn pixel, clipped at the border, set to 0 (after normalisation, as the
  reference does it).

Every draw comes from the ``torch.Generator`` the caller passes (on the CPU; the few numbers per
image then move to the batch's device), so a seed fixes the augmentation whatever the device,
and saving the generator's state (``gen.get_state()``, a uint8 tensor) is enough to resume it.

Example:
    >>> import torch
    >>> aug = Augment(crop_padding=4, flip=True, cutout=16, pad_value=(0.0, 0.0, 0.0))
    >>> x = torch.randn(8, 3, 32, 32)
    >>> a = aug(x, torch.Generator().manual_seed(0)); b = aug(x, torch.Generator().manual_seed(0))
    >>> torch.equal(a, b), a.shape
    (True, torch.Size([8, 3, 32, 32]))
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

__all__ = ["Augment"]


@dataclasses.dataclass(frozen=True)
class Augment:
    """Random crop with padding, horizontal flip and cutout of a batch (see the module docstring).

    Attributes:
        crop_padding: padding of the random crop (0: no crop).
        flip: random horizontal flips.
        cutout: side of the cutout square (0: no cutout).
        pad_value: the per-channel value the crop pads with (``-mean / std``); ``None``: 0.
    """

    crop_padding: int = 0
    flip: bool = False
    cutout: int = 0
    pad_value: Sequence[float] | None = None

    @property
    def active(self) -> bool:
        """True when it changes anything."""
        return bool(self.crop_padding or self.flip or self.cutout)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The augmented batch (a new tensor; ``x`` is not changed)."""
        n, c, h, w = x.shape
        dev = x.device
        if self.crop_padding:
            p = int(self.crop_padding)
            oy = torch.randint(0, 2 * p + 1, (n,), generator=gen).to(dev)
            ox = torch.randint(0, 2 * p + 1, (n,), generator=gen).to(dev)
            padded = x.new_empty((n, c, h + 2 * p, w + 2 * p))
            fill = torch.zeros(c, dtype=x.dtype) if self.pad_value is None else torch.tensor(
                [float(v) for v in self.pad_value], dtype=x.dtype)
            padded[:] = fill.to(dev).view(1, c, 1, 1)
            padded[:, :, p:p + h, p:p + w] = x
            rows = (oy[:, None] + torch.arange(h, device=dev)[None, :])  # (N, H)
            cols = (ox[:, None] + torch.arange(w, device=dev)[None, :])  # (N, W)
            ni = torch.arange(n, device=dev)[:, None, None, None]
            ci = torch.arange(c, device=dev)[None, :, None, None]
            x = padded[ni, ci, rows[:, None, :, None], cols[:, None, None, :]]
        if self.flip:
            flip = (torch.rand(n, generator=gen) < 0.5).to(dev)
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        if self.cutout:
            half = int(self.cutout) // 2
            cy = torch.randint(0, h, (n,), generator=gen).to(dev)
            cx = torch.randint(0, w, (n,), generator=gen).to(dev)
            ys = torch.arange(h, device=dev)[None, :]
            xs = torch.arange(w, device=dev)[None, :]
            in_y = (ys >= (cy[:, None] - half)) & (ys < (cy[:, None] + half))  # the reference's clip(y -/+ L/2)
            in_x = (xs >= (cx[:, None] - half)) & (xs < (cx[:, None] + half))
            hole = in_y[:, None, :, None] & in_x[:, None, None, :]
            x = x.masked_fill(hole, 0.0)
        return x
