"""``enlarge_kernel``: grow a conv's kernel by zero-padding it, and its padding to match.

Why the function is preserved (exactly, in any mode)::

    A conv with kernel k, dilation d, stride s, padding p computes, per output position o,
        y[o] = sum_{i=0}^{k-1} W[i] * x_pad[o*s - p + d*i]
    Grow k to k' = k + 2m (m >= 1) by putting m zeros on each side of W:
        W'[i'] = W[i' - m] for m <= i' < m + k, else 0,
    and grow the padding to p' = p + d*m. Then, with i' = i + m,
        y'[o] = sum_{i'} W'[i'] * x_pad'[o*s - p' + d*i'] = sum_i W[i] * x[o*s - p + d*i] = y[o]
    (the extra taps have weight 0), and the output size
        floor((H + 2p' - d*(k'-1) - 1) / s) + 1 = floor((H + 2p - d*(k-1) - 1) / s) + 1
    is unchanged. Per spatial axis; groups only change the weight's second dim, which is untouched.

The kernel must grow by an even amount on each axis (odd -> odd: 3 -> 5, 7 ...) so the zeros
can sit symmetrically around the old kernel; shrinking is not function-preserving and is refused.
"""

from __future__ import annotations

import numpy as np

from archir import Graph
from archir.ops import pair

from passes._util import require_node
from passes.infra import PreconditionError, graph_pass

__all__ = ["enlarge_kernel", "enlarge_kernel_targets", "MAX_TARGET_KERNEL"]

#: the largest kernel ``enlarge_kernel_targets`` proposes (a search-space bound, not a limit of the pass)
MAX_TARGET_KERNEL = 7


def _pair_arg(v) -> tuple[int, int] | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v, v
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        return int(v[0]), int(v[1])
    return None


@graph_pass(preserves="function")
def enlarge_kernel(g: Graph, node: str, kernel_size, seed: int = 0) -> Graph:
    """Zero-pad the kernel of conv ``node`` to ``kernel_size`` and grow its padding to keep the output.

    Args:
        g: the graph (not changed).
        node: a ``conv2d`` node (any stride, dilation and groups).
        kernel_size: the new size, an int or ``(kh, kw)``; on each axis at least the current
            size, larger on one axis at least, and larger by an even amount (3 -> 5, 7, ...).
        seed: unused (deterministic); accepted so every morphism takes a seed.

    Returns:
        A new graph where ``node`` has the larger kernel (same node id).

    Raises:
        PreconditionError: ``node`` is unknown (the message lists legal targets) or not a conv,
            or ``kernel_size`` is smaller, equal, grows by an odd amount (an even size from an
            odd one), or is not an int / pair of ints.

    Example:
        >>> g2 = passes.enlarge_kernel(g, "l0.conv", 5)     # doctest: +SKIP
    """
    require_node(g, node, morphism="enlarge_kernel", role="node",
                 legal=lambda: (t["node"] for t in enlarge_kernel_targets(g)))
    n = g.node(node)
    if n.op != "conv2d":
        raise PreconditionError(f"enlarge_kernel applies to conv2d nodes, this is a {n.op}",
                                pass_name="enlarge_kernel", node=node, hint="pick a conv2d node")
    new = _pair_arg(kernel_size)
    if new is None:
        raise PreconditionError(f"kernel_size must be an int or a pair of ints, got {kernel_size!r}",
                                pass_name="enlarge_kernel", node=node)
    old = pair(n.attrs["kernel_size"])
    if new[0] < old[0] or new[1] < old[1]:
        raise PreconditionError(
            f"kernel_size {kernel_size!r} would shrink the {old[0]}x{old[1]} kernel; dropping taps changes the "
            "function", pass_name="enlarge_kernel", node=node,
            hint=f"pick a larger odd size such as {old[0] + 2} (pruning is not a morphism)")
    if new == old:
        raise PreconditionError(f"kernel_size {kernel_size!r} is the current size; nothing to enlarge",
                                pass_name="enlarge_kernel", node=node, hint=f"pick a larger size such as {old[0] + 2}")
    if (new[0] - old[0]) % 2 or (new[1] - old[1]) % 2:
        parity = "even" if old[0] % 2 else "odd"
        raise PreconditionError(
            f"kernel_size {kernel_size!r} grows the {old[0]}x{old[1]} kernel by an odd amount (an {parity} size); "
            "the zeros cannot sit symmetrically around the old kernel, which would shift the output",
            pass_name="enlarge_kernel", node=node,
            hint=f"grow by 2, 4, ...: e.g. kernel_size={old[0] + 2}")
    mh, mw = (new[0] - old[0]) // 2, (new[1] - old[1]) // 2
    dh, dw = pair(n.attrs["dilation"])
    ph, pw = pair(n.attrs["padding"])
    w = n.params["weight"]
    g = g.copy()
    ks = new[0] if new[0] == new[1] else [new[0], new[1]]
    pad = (ph + dh * mh, pw + dw * mw)
    g.set_attrs(node, kernel_size=ks, padding=pad[0] if pad[0] == pad[1] else [pad[0], pad[1]])
    g.set_params(node, weight=np.pad(w, ((0, 0), (0, 0), (mh, mh), (mw, mw))))
    return g.validate()


def enlarge_kernel_targets(g: Graph) -> list[dict]:
    """Every conv whose kernel can grow by 2 on each axis without passing ``MAX_TARGET_KERNEL``."""
    out = []
    for n in g.topo_order():
        node = g.node(n)
        if node.op == "conv2d":
            kh, kw = pair(node.attrs["kernel_size"])
            if max(kh, kw) + 2 <= MAX_TARGET_KERNEL:
                out.append({"node": n, "kernel_size": kh + 2 if kh == kw else [kh + 2, kw + 2]})
    return out
