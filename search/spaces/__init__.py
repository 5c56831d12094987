"""Search spaces: decisions (plain JSON-able dicts) <-> archir graphs.

- :class:`Space` -- the protocol: ``sample``, ``mutate``, ``encode``/``decode``, ``build``
  (plain graph; ``cells=``/``channels=`` for a larger network), ``supernet`` (choice nodes),
  ``supernet_decisions``/``derive`` (supernet -> the same graph as ``build``), ``describe``.
- :class:`DartsSpace` (``"darts"``) -- the DARTS/NASNet cell space.
- :class:`ChainSpace` (``"chain"``) -- the FBNet/ProxylessNAS MBConv chain space.
- :class:`Nb201Space` (``"nb201"``) -- the NAS-Bench-201 cell space (4 nodes, 6 edges, 5 ops) and its
  network; decisions convert to and from NAS-Bench-201's architecture string.
- :class:`StartSpace` (``"start"``) -- the space of morphism search: a start graph and the ways to
  grow a trained parent (``search.morph`` grows them).
- :func:`get_space` -- a space by name (:func:`register_space` adds one); :class:`DecisionError` -- decisions that do not fit;
  :class:`SpaceError` -- a space that cannot be made (unknown name, an option it does not take).
- :func:`simplify` -- drop ``none`` edges, identities and dead nodes from a derived supernet.
"""

from search.spaces.base import DecisionError, Space, SpaceError, get_space, register_space, simplify, space_names
from search.spaces.chain import ChainSpace
from search.spaces.darts import DartsSpace
from search.spaces.nb201 import Nb201Space

from search.spaces.start import StartSpace

__all__ = ["Space", "DartsSpace", "ChainSpace", "Nb201Space", "StartSpace", "DecisionError", "SpaceError", "get_space",
           "register_space", "space_names", "simplify"]
