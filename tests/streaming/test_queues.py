"""Bounded queues: each drop policy, blocking, flush, close, waiter hygiene."""
import asyncio

import pytest

from streaming.queues import BoundedQueue, DropPolicy, QueueClosed, QueueEmpty, QueueFull

TIMEOUT = 1.0


async def settle():
    """Let every ready task run until it blocks."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_drop_oldest_keeps_newest_items():
    q = BoundedQueue(3, DropPolicy.DROP_OLDEST)
    dropped = [q.put_nowait(i) for i in range(5)]
    assert dropped == [None, None, None, 0, 1]
    assert [q.get_nowait() for _ in range(3)] == [2, 3, 4]
    assert q.dropped == 2 and q.high_water == 3


def test_drop_newest_keeps_oldest_items():
    q = BoundedQueue(2, DropPolicy.DROP_NEWEST)
    dropped = [q.put_nowait(i) for i in range(4)]
    assert dropped == [None, None, 2, 3]  # the arrival is what gets returned
    assert [q.get_nowait(), q.get_nowait()] == [0, 1]
    assert q.dropped == 2


def test_default_policy_is_drop_oldest():
    assert BoundedQueue(1).policy is DropPolicy.DROP_OLDEST


def test_block_policy_put_nowait_raises_queue_full():
    q = BoundedQueue(1, DropPolicy.BLOCK)
    q.put_nowait("a")
    with pytest.raises(QueueFull):
        q.put_nowait("b")
    assert q.dropped == 0
    assert isinstance(QueueFull(), asyncio.QueueFull)  # callers catching asyncio's type still work


async def test_block_policy_waits_for_space():
    q = BoundedQueue(1, DropPolicy.BLOCK)
    await q.put("a")
    putter = asyncio.create_task(q.put("b"))
    await settle()
    assert not putter.done()
    assert await q.get() == "a"
    await asyncio.wait_for(putter, TIMEOUT)
    assert q.get_nowait() == "b"


async def test_async_put_with_drop_policy_never_waits():
    q = BoundedQueue(1, DropPolicy.DROP_OLDEST)
    await q.put(1)
    assert await asyncio.wait_for(q.put(2), TIMEOUT) == 1


async def test_getter_waits_for_an_item():
    q: BoundedQueue[str] = BoundedQueue(2)
    getter = asyncio.create_task(q.get())
    await settle()
    assert not getter.done()
    q.put_nowait("x")
    assert await asyncio.wait_for(getter, TIMEOUT) == "x"


def test_get_nowait_on_empty_open_queue_raises_queue_empty():
    with pytest.raises(QueueEmpty):
        BoundedQueue(1).get_nowait()


async def test_closed_queue_wakes_waiting_getter():
    q = BoundedQueue(2)
    getter = asyncio.create_task(q.get())
    await settle()
    q.close()
    with pytest.raises(QueueClosed):
        await asyncio.wait_for(getter, TIMEOUT)


async def test_closed_queue_drains_remaining_items_first():
    q = BoundedQueue(3)
    q.put_nowait(1)
    q.put_nowait(2)
    q.close()
    assert await q.get() == 1
    assert q.get_nowait() == 2
    with pytest.raises(QueueClosed):
        await q.get()
    with pytest.raises(QueueClosed):
        q.get_nowait()


async def test_put_after_close_raises():
    q = BoundedQueue(1)
    q.close()
    with pytest.raises(QueueClosed):
        q.put_nowait(1)
    with pytest.raises(QueueClosed):
        await q.put(1)


async def test_close_wakes_blocked_putter_with_queue_closed():
    q = BoundedQueue(1, DropPolicy.BLOCK)
    q.put_nowait(1)
    putter = asyncio.create_task(q.put(2))
    await settle()
    q.close()
    with pytest.raises(QueueClosed):
        await asyncio.wait_for(putter, TIMEOUT)


async def test_clear_flushes_and_frees_blocked_putter():
    q = BoundedQueue(2, DropPolicy.BLOCK)
    q.put_nowait(1)
    q.put_nowait(2)
    putter = asyncio.create_task(q.put(3))
    await settle()
    assert q.clear() == 2
    await asyncio.wait_for(putter, TIMEOUT)
    assert q.qsize() == 1 and q.get_nowait() == 3
    assert q.dropped == 0  # a flush is not a policy drop
    assert q.clear() == 0


async def test_cancelled_getter_does_not_swallow_an_item():
    q = BoundedQueue(2)
    g1 = asyncio.create_task(q.get())
    g2 = asyncio.create_task(q.get())
    await settle()
    q.put_nowait("x")  # wakes g1 ...
    g1.cancel()         # ... which is cancelled before it takes the item
    assert await asyncio.wait_for(g2, TIMEOUT) == "x"
    assert q.empty()


async def test_async_iteration_ends_when_closed_and_drained():
    q = BoundedQueue(4)
    for i in range(3):
        q.put_nowait(i)
    q.close()
    assert [item async for item in q] == [0, 1, 2]


async def test_producer_consumer_preserves_order_under_back_pressure():
    q = BoundedQueue(2, DropPolicy.BLOCK)

    async def produce():
        for i in range(100):
            await q.put(i)
        q.close()

    task = asyncio.create_task(produce())
    got = [item async for item in q]
    await task
    assert got == list(range(100))
    assert q.high_water <= 2


def test_high_water_tracks_the_largest_size():
    q = BoundedQueue(5)
    for i in range(4):
        q.put_nowait(i)
    q.get_nowait()
    q.get_nowait()
    q.put_nowait(9)
    assert q.high_water == 4 and len(q) == 3 and not q.full()


@pytest.mark.parametrize("size", [0, -1])
def test_maxsize_below_one_is_rejected(size):
    with pytest.raises(ValueError):
        BoundedQueue(size)
