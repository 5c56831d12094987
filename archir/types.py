"""Tensor types of the IR.

A :class:`TensorType` describes one sample: the leading batch dimension is symbolic
and is *not* part of ``shape``. ``TensorType((16, 32, 32))`` is a ``(N, 16, 32, 32)``
tensor for any batch size ``N``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TensorType", "DTYPES"]

#: dtypes the IR knows. Weights are always float32.
DTYPES = ("float32",)


@dataclass(frozen=True)
class TensorType:
    """The type of a node's output: per-sample shape (batch excluded) and dtype.

    Example:
        >>> TensorType((3, 32, 32)).numel
        3072
    """

    shape: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    @property
    def rank(self) -> int:
        """Number of dimensions, batch excluded."""
        return len(self.shape)

    @property
    def numel(self) -> int:
        """Elements per sample."""
        n = 1
        for d in self.shape:
            n *= d
        return n

    def __str__(self) -> str:
        return "(N, " + ", ".join(str(d) for d in self.shape) + ")" if self.shape else "(N,)"
