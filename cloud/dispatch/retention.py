"""How long the registry keeps the dispatcher's fine-grained records, and the pruning of them.

The dispatcher writes one ``cycle_performance`` row per pool per cycle (about 43 000 a day at
2 s) and a trader's balancing setpoints arrive every few seconds as ``activations``. Both are
for audits and the API's ``/performance``; the quarter-hour ``interval`` records are the
long-term summary and are kept. Without pruning the registry grows without bound, so the
leading dispatcher prunes about once an hour (:meth:`Retention.due`), off the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloud.registry import Registry

__all__ = ["Pruned", "Retention", "prune"]

DAY_S = 86_400.0


@dataclass(frozen=True, slots=True)
class Retention:
    """Days of records kept (``cycles_days``, ``activations_days``; 0 keeps them forever)
    and how often the leader prunes (clock seconds)."""

    cycles_days: float = 7.0
    activations_days: float = 30.0
    every_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.cycles_days < 0 or self.activations_days < 0:
            raise ValueError("retention days must be >= 0 (0 keeps the records forever)")
        if not self.every_s > 0:
            raise ValueError(f"every_s must be > 0, got {self.every_s}")

    def due(self, now: float, last: float | None) -> bool:
        """Prune now? At the first chance, then every ``every_s``."""
        return last is None or now - last >= self.every_s


@dataclass(frozen=True, slots=True)
class Pruned:
    cycles: int
    activations: int


def prune(registry: Registry, now: float, retention: Retention) -> Pruned:
    """Delete cycle records and expired setpoints older than their retention (blocking I/O:
    call it in a thread)."""
    cycles = activations = 0
    if retention.cycles_days > 0:
        cycles = registry.prune_cycles(now - retention.cycles_days * DAY_S)
    if retention.activations_days > 0:
        activations = registry.prune_activations(now - retention.activations_days * DAY_S)
    return Pruned(cycles, activations)
