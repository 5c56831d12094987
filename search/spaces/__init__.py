"""Search spaces: decisions (plain JSON-able dicts) <-> archir graphs.

- :class:`Space` -- the protocol: ``sample``, ``mutate``, ``encode``/``decode``, ``build``
  (plain graph; ``cells=``/``channels=`` for a larger network), ``supernet`` (choice nodes),
  ``supernet_decisions``/``derive`` (supernet -> the same graph as ``build``), ``describe``.
- :class:`DartsSpace` (``"darts"``) -- the DARTS/NASNet cell space.
- :class:`ChainSpace` (``"chain"``) -- the FBNet/ProxylessNAS MBConv chain space.
- :func:`get_space` -- a space by name; :class:`DecisionError` -- decisions that do not fit;
  :class:`SpaceError` -- a space that cannot be made (unknown name, an option it does not take).
- :func:`simplify` -- drop ``none`` edges, identities and dead nodes from a derived supernet.
"""

from search.spaces.base import DecisionError, Space, SpaceError, get_space, simplify, space_names
from search.spaces.chain import ChainSpace
from search.spaces.darts import DartsSpace

__all__ = ["Space", "DartsSpace", "ChainSpace", "DecisionError", "SpaceError", "get_space", "space_names", "simplify"]
