"""The session clock: one tick per codec frame, on an absolute schedule.

Real time (the default) sleeps until each frame's absolute due time ``start + i * frame_seconds``.
Computing the due time from the index (never by adding up sleeps) means work done between ticks and
sleep overshoot cannot accumulate into drift: after an hour the clock is still on frame boundaries.

If the consumer falls behind, the clock does not sleep and does not drop or reschedule frames: each
missed tick is issued at once, one per pull, with ``late_by`` saying how late it is, until the
schedule is met again. Every codec frame of audio needs its tick, so skipping is not an option here;
a consumer that prefers to skip can look at ``late_by``.

As-fast-as-possible mode (``realtime=False``) never sleeps; it only yields to the event loop between
ticks so that other tasks (readers, writers) still run. Used for files, tests and benchmarks.

Testing real-time logic without sleeping: build the clock on a :class:`VirtualClock`::

    vc = VirtualClock()
    clock = FrameClock(0.08, time_fn=vc.time, sleep_fn=vc.sleep)
    async for tick in clock.ticks(max_frames=100):
        vc.advance(0.03)          # pretend this frame's work took 30 ms

``vc.sleep`` moves virtual time forward by the requested amount at once (and yields to the loop),
so a 100-frame run takes microseconds while ``Tick.now``/``late_by`` read exactly as they would in
real time.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable

__all__ = ["Tick", "FrameClock", "VirtualClock"]


@dataclass(frozen=True)
class Tick:
    """One frame's turn on the session clock.

    Attributes:
        index: frame number, 0 for the first tick of :meth:`FrameClock.ticks`.
        scheduled: seconds since start when this frame is due (``index * frame_seconds``).
        now: seconds since start when the tick was issued.
        late_by: ``max(0, now - scheduled)``; always 0 in as-fast-as-possible mode (no deadline).
    """

    index: int
    scheduled: float
    now: float
    late_by: float


class VirtualClock:
    """Simulated time for tests: ``time()`` only moves on ``sleep()`` or ``advance()``.

    Pass ``time_fn=vc.time, sleep_fn=vc.sleep`` to :class:`FrameClock`. Meant for one sleeper at a
    time (the frame clock); the consumer simulates its own work with :meth:`advance`.

    Attributes:
        sleeps: every duration passed to :meth:`sleep`, in order, so tests can check how the
            clock waited (e.g. that it did not sleep for late ticks).
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self.sleeps: list[float] = []

    def time(self) -> float:
        """Current virtual time in seconds."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move virtual time forward (simulated work). Negative values are refused."""
        if seconds < 0:
            raise ValueError(f"VirtualClock cannot go backwards (advance by {seconds}).")
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        """Advance by ``seconds`` at once, then yield so other tasks run as they would in a sleep."""
        self.sleeps.append(seconds)
        self._now += max(0.0, seconds)
        await asyncio.sleep(0)


class FrameClock:
    """Issues one :class:`Tick` per codec frame.

    Args:
        frame_seconds: frame length, e.g. 0.08 for an 80 ms codec frame.
        realtime: True to pace ticks to the wall clock; False to run as fast as possible.
        time_fn: monotonic seconds source (default ``time.monotonic``).
        sleep_fn: ``async sleep(seconds)`` used in real time (default ``asyncio.sleep``). Inject
            ``VirtualClock.sleep`` together with ``VirtualClock.time``.

    Attributes:
        frames_late: ticks issued more than half a frame after their due time.
        frames_issued: ticks issued since the last :meth:`ticks` call began.
    """

    def __init__(
        self,
        frame_seconds: float,
        realtime: bool = True,
        time_fn: Callable[[], float] | None = None,
        sleep_fn: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        if not frame_seconds > 0:
            raise ValueError(f"frame_seconds must be positive, got {frame_seconds}.")
        self.frame_seconds = float(frame_seconds)
        self.realtime = realtime
        self._time = time_fn or time.monotonic
        self._sleep = sleep_fn or asyncio.sleep
        self._start: float | None = None
        self._stopped = False
        self.frames_late = 0
        self.frames_issued = 0

    @property
    def elapsed(self) -> float:
        """Seconds since the current :meth:`ticks` run started (0 before it starts)."""
        if self._start is None:
            return 0.0
        return self._time() - self._start

    def stop(self) -> None:
        """End the iteration after the current tick (no further tick is issued, even one that
        is already being waited for). Permanent: a stopped clock stays stopped, so a stop() that
        races ahead of the first pull is not lost; make a new clock to start again."""
        self._stopped = True

    async def ticks(self, max_frames: int | None = None) -> AsyncIterator[Tick]:
        """Yield ticks 0, 1, 2, ... until :meth:`stop` or ``max_frames`` ticks.

        The schedule starts when the first tick is pulled, so tick 0 is never late.
        """
        self._start = self._time()
        self.frames_late = 0
        self.frames_issued = 0
        half_frame = self.frame_seconds / 2
        index = 0
        while not self._stopped and (max_frames is None or index < max_frames):
            # Multiply, never accumulate: float error stays at one rounding, not index of them.
            scheduled = index * self.frame_seconds
            if self.realtime:
                wait = scheduled - self.elapsed
                if wait > 0:
                    await self._sleep(wait)
                    if self._stopped:  # stop() arrived while we were waiting
                        break
                now = self.elapsed
                late_by = max(0.0, now - scheduled)
                if late_by > half_frame:
                    self.frames_late += 1
            else:
                # Yield so producers/consumers on the same loop are not starved.
                await asyncio.sleep(0)
                if self._stopped:
                    break
                now = self.elapsed
                late_by = 0.0
            self.frames_issued += 1
            yield Tick(index=index, scheduled=scheduled, now=now, late_by=late_by)
            index += 1
