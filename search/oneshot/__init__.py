"""One-shot search drivers: one weight-sharing supernet trained with a distribution over architectures.

Public names (see :mod:`search.oneshot.base`):
    OneShotDriver, ONESHOT, register_oneshot, get_oneshot, run_oneshot, COMMON_OPTIONS: the framework.
    decisions_from_probs, categorical_entropy, PeakMemory, train_step_peak, driver_step_peak, save_checkpoint,
        load_checkpoint, optimizer_state, load_optimizer_state: helpers shared by drivers.

Drivers (``archir search --strategy NAME``): ``darts`` (:mod:`search.oneshot.darts`), ``snas``
(:mod:`search.oneshot.snas`), ``parsec`` (:mod:`search.oneshot.parsec`), ``enas``
(:mod:`search.oneshot.enas`), and every other module of
this package (each registers itself with :func:`register_oneshot` when imported here).
"""

import importlib
import pkgutil

from search.oneshot.base import (COMMON_OPTIONS, ONESHOT, OneShotDriver, PeakMemory, categorical_entropy,
                                 decisions_from_probs, driver_step_peak, get_oneshot, load_checkpoint,
                                 load_optimizer_state, optimizer_state, register_oneshot, run_oneshot, save_checkpoint,
                                 train_step_peak)

# every driver module of this package registers itself (a new driver is one new file here)
for _m in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _m != "base":
        importlib.import_module(f"{__name__}.{_m}")

__all__ = ["OneShotDriver", "ONESHOT", "register_oneshot", "get_oneshot", "run_oneshot", "COMMON_OPTIONS",
           "decisions_from_probs", "categorical_entropy", "PeakMemory", "save_checkpoint", "load_checkpoint",
           "optimizer_state", "load_optimizer_state", "train_step_peak", "driver_step_peak"]
