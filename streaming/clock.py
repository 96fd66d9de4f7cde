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

A live client's audio arrives in its own batches and with network jitter: :class:`FollowingClock`
(the Realtime server's) moves its grid to follow the arrivals, so a late frame never costs a
permanent frame of latency.

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

__all__ = ["Tick", "FrameClock", "VirtualClock", "FollowingClock"]


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


class FollowingClock(FrameClock):
    """A real-time :class:`FrameClock` whose phase follows the arrival of the client's audio.

    A plain clock ticks on a fixed grid; when a frame's audio arrives a few ms after its tick, the
    session substitutes silence (an underrun) and from then on runs one whole frame behind: every
    such hiccup adds a frame of latency for the rest of the conversation. This clock instead

    - waits up to ``max_wait`` for a frame that is due but not yet in (moving its grid later by the
      wait), as long as audio has been streaming (``active``);
    - moves its grid earlier by up to ``step`` per tick while the queued frame has been waiting
      longer than ``target_slack`` (or a whole extra frame is queued),

    so a frame is consumed ``target_slack`` after it arrives, whatever the client's batching.

    Args:
        frame_seconds: the codec frame.
        queued: number of user frames waiting for the model.
        last_arrival: ``time.monotonic()`` of the latest complete frame.
        arrived: set whenever a complete frame arrives.
    """

    def __init__(self, frame_seconds: float, queued: Callable[[], int], last_arrival: Callable[[], float],
                 arrived: asyncio.Event, target_slack: float = 0.010, max_wait: float = 0.040,
                 step: float = 0.004, idle_after: float = 0.5) -> None:
        super().__init__(frame_seconds, realtime=True)
        self.queued, self.last_arrival, self.arrived = queued, last_arrival, arrived
        self.target_slack, self.max_wait, self.step, self.idle_after = target_slack, max_wait, step, idle_after
        self.waits = 0
        self.advances = 0
        self.shift = 0.0  # total grid movement, seconds (+ later, - earlier)

    async def ticks(self, max_frames: int | None = None) -> AsyncIterator[Tick]:
        self._start = self._time()
        self.frames_late = self.frames_issued = 0
        index = 0
        while not self._stopped and (max_frames is None or index < max_frames):
            scheduled = index * self.frame_seconds
            wait = scheduled - self.elapsed
            if wait > 0:
                await self._sleep(wait)
                if self._stopped:
                    break
            await self._follow(scheduled)
            if self._stopped:
                break
            now = self.elapsed
            late_by = max(0.0, now - scheduled)
            if late_by > self.frame_seconds / 2:
                self.frames_late += 1
            self.frames_issued += 1
            yield Tick(index=index, scheduled=scheduled, now=now, late_by=late_by)
            index += 1

    async def _follow(self, scheduled: float) -> None:
        now = time.monotonic()
        if now - self.last_arrival() > self.idle_after or self.elapsed - scheduled > self.frame_seconds / 2:
            return  # the client is not streaming, or we are catching up after a stall
        q = self.queued()
        if q == 0:
            self.arrived.clear()
            t0 = self._time()
            try:
                await asyncio.wait_for(self.arrived.wait(), self.max_wait)
            except asyncio.TimeoutError:
                return  # a real underrun: the session will use silence
            waited = self._time() - t0
            self._start += waited
            self.shift += waited
            self.waits += 1
        else:
            slack = now - self.last_arrival() if q == 1 else self.frame_seconds
            if slack > self.target_slack + 0.002:
                d = min(self.step, slack - self.target_slack)
                self._start -= d
                self.shift -= d
                self.advances += 1
