"""Bounded async queues with an explicit policy for what happens when they are full.

Real-time audio must never let a queue grow without bound: a slow consumer would turn into ever
growing latency. Each queue therefore says what it gives up when full:

- ``DROP_OLDEST`` (default): keep the freshest data (playout, live audio: old audio is worthless).
- ``DROP_NEWEST``: keep what is already queued, discard the arrival (events that must stay ordered).
- ``BLOCK``: back-pressure; the producer waits (offline pipelines, files).

``clear()`` flushes a queue on cancellation (barge-in); ``close()`` ends it: getters drain what is
left and then get :class:`QueueClosed`, so consumer loops end without sentinels.

Single event loop only (like ``asyncio.Queue``); not thread-safe.
"""
from __future__ import annotations

import asyncio
import enum
from collections import deque
from typing import AsyncIterator, Callable, Generic, TypeVar

__all__ = ["DropPolicy", "BoundedQueue", "QueueFull", "QueueEmpty", "QueueClosed"]

T = TypeVar("T")


class DropPolicy(enum.Enum):
    """What a full queue does with a new item."""

    BLOCK = "block"
    DROP_OLDEST = "drop_oldest"
    DROP_NEWEST = "drop_newest"


class QueueFull(asyncio.QueueFull):
    """``put_nowait`` on a full ``BLOCK`` queue."""


class QueueEmpty(asyncio.QueueEmpty):
    """``get_nowait`` on an empty queue that is still open."""


class QueueClosed(Exception):
    """Put on a closed queue, or get on a closed queue that has been drained."""


class BoundedQueue(Generic[T]):
    """A FIFO of at most ``maxsize`` items with a :class:`DropPolicy`.

    Args:
        maxsize: capacity, at least 1.
        policy: what a full queue does on put.
        name: shown in errors and reprs (e.g. ``"playout"``).

    Attributes:
        dropped: items discarded by the drop policy (not those removed by :meth:`clear`).
        high_water: the largest size the queue has reached.
    """

    def __init__(self, maxsize: int, policy: DropPolicy = DropPolicy.DROP_OLDEST, name: str = "") -> None:
        if maxsize < 1:
            raise ValueError(f"BoundedQueue {name!r}: maxsize must be at least 1, got {maxsize}.")
        self.maxsize = maxsize
        self.policy = policy
        self.name = name
        self.dropped = 0
        self.high_water = 0
        self._items: deque[T] = deque()
        self._closed = False
        # Futures of tasks waiting in get() / put(); woken one at a time, all on close().
        self._getters: deque[asyncio.Future[None]] = deque()
        self._putters: deque[asyncio.Future[None]] = deque()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (f"BoundedQueue(name={self.name!r}, size={len(self._items)}/{self.maxsize}, "
                f"policy={self.policy.name}, dropped={self.dropped}, {state})")

    # -- state -------------------------------------------------------------------------------

    def qsize(self) -> int:
        return len(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return len(self._items) >= self.maxsize

    @property
    def closed(self) -> bool:
        return self._closed

    # -- put -----------------------------------------------------------------------------------

    def put_nowait(self, item: T) -> T | None:
        """Add ``item`` now; return the item the policy dropped (None if nothing was dropped).

        Raises:
            QueueClosed: the queue is closed.
            QueueFull: the queue is full and its policy is ``BLOCK``.
        """
        self._check_open()
        dropped: T | None = None
        if self.full():
            if self.policy is DropPolicy.BLOCK:
                raise QueueFull(f"queue {self.name!r} is full ({self.maxsize} items)")
            self.dropped += 1
            if self.policy is DropPolicy.DROP_NEWEST:
                return item
            dropped = self._items.popleft()
        self._append(item)
        return dropped

    async def put(self, item: T) -> T | None:
        """Add ``item``; with ``BLOCK`` wait for space, otherwise as :meth:`put_nowait`."""
        if self.policy is DropPolicy.BLOCK:
            while self.full():
                self._check_open()
                await self._wait(self._putters, wake_if=lambda: not self.full())
        return self.put_nowait(item)

    # -- get -----------------------------------------------------------------------------------

    def get_nowait(self) -> T:
        """Remove and return the oldest item.

        Raises:
            QueueEmpty: nothing queued (queue open).
            QueueClosed: nothing queued and the queue is closed.
        """
        if not self._items:
            if self._closed:
                raise QueueClosed(f"queue {self.name!r} is closed")
            raise QueueEmpty(f"queue {self.name!r} is empty")
        item = self._items.popleft()
        self._wake_one(self._putters)
        return item

    async def get(self) -> T:
        """Remove and return the oldest item, waiting for one; :class:`QueueClosed` once closed
        and drained."""
        while not self._items:
            if self._closed:
                raise QueueClosed(f"queue {self.name!r} is closed")
            await self._wait(self._getters, wake_if=lambda: bool(self._items))
        return self.get_nowait()

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[T]:
        """``async for item in queue`` until the queue is closed and drained."""
        while True:
            try:
                yield await self.get()
            except QueueClosed:
                return

    # -- flush / close -------------------------------------------------------------------------

    def clear(self) -> int:
        """Discard everything queued (a flush on cancellation); return how many items went."""
        n = len(self._items)
        self._items.clear()
        for _ in range(n):
            self._wake_one(self._putters)
        return n

    def close(self) -> None:
        """No more puts. Queued items can still be got; then getters get :class:`QueueClosed`.
        Every waiting getter and putter is woken now."""
        self._closed = True
        for waiters in (self._getters, self._putters):
            while waiters:
                fut = waiters.popleft()
                if not fut.done():
                    fut.set_result(None)

    # -- internals -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise QueueClosed(f"queue {self.name!r} is closed")

    def _append(self, item: T) -> None:
        self._items.append(item)
        if len(self._items) > self.high_water:
            self.high_water = len(self._items)
        self._wake_one(self._getters)

    @staticmethod
    def _wake_one(waiters: deque[asyncio.Future[None]]) -> None:
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    async def _wait(self, waiters: deque[asyncio.Future[None]], wake_if: Callable[[], bool]) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(fut)
        try:
            await fut
        except BaseException:
            fut.cancel()
            try:
                waiters.remove(fut)
            except ValueError:
                pass
            # We were woken and then cancelled before acting: pass the wake-up on, or the item
            # (or free slot) meant for us would sit there with another waiter still asleep.
            if not fut.cancelled() and wake_if():
                self._wake_one(waiters)
            raise
