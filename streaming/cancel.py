"""Cancellation stamps: drop output that was produced for a turn the user has already cut off.

A barge-in cannot recall items already sitting in queues or in flight in another task. Instead every
producer stamps what it emits with the generation current when it started the work, and every
consumer drops items whose stamp is no longer current::

    gen = Generation()
    out.put_nowait(gen.stamp(pcm))          # producer
    ...
    gen.bump("turn_detected")               # barge-in
    ...
    s = await out.get()                     # consumer
    if gen.is_current(s.generation): play(s.item)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Generation", "Stamped"]

T = TypeVar("T")


@dataclass(frozen=True)
class Stamped(Generic[T]):
    """An item with the generation it was produced under.

    Attributes:
        generation: :attr:`Generation.current` when the producer started on this item.
        item: the payload (audio frame, token, event ...).
    """

    generation: int
    item: T


class Generation:
    """A counter that moves on every cancellation.

    Attributes:
        current: the live generation; starts at 0.
        last_reason: why the last :meth:`bump` happened (None before any).
    """

    def __init__(self) -> None:
        self.current = 0
        self.last_reason: str | None = None

    def bump(self, reason: str) -> int:
        """Invalidate everything stamped so far; return the new generation."""
        self.current += 1
        self.last_reason = reason
        return self.current

    def is_current(self, stamp: int) -> bool:
        """True if an item stamped ``stamp`` is still wanted."""
        return stamp == self.current

    def stamp(self, item: T) -> Stamped[T]:
        """Wrap ``item`` with the current generation."""
        return Stamped(self.current, item)
