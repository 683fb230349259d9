"""DeviceFeed: no-op on unchanged sets, immediate current set, coalescing of intermediate sets."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from snnrm.core.devices import NEURON_CORE, DeviceSet
from snnrm.kubelet.feed import DeviceFeed


def _set(*healthy: bool) -> DeviceSet:
    n = len(healthy)
    return DeviceSet(
        resource=NEURON_CORE,
        ids=tuple(f"chip0-core{i}" for i in range(n)),
        healthy=np.array(healthy, dtype=bool),
        numa=np.zeros(n, dtype=np.int64),
    )


async def _let_woken_tasks_run() -> None:
    """Return once every task that is ready to run has taken its step.

    ``publish`` wakes waiters synchronously (their wake-up is queued on the loop at once) and the loop runs queued
    callbacks in order, so a bare yield puts this task behind them: a subscriber woken by what happened before is
    done by the time this returns. No timer, so nothing depends on how fast the machine is.
    """
    await asyncio.sleep(0)


async def test_publish_same_set_is_noop() -> None:
    """Publishing an equal set does not bump the version."""
    feed = DeviceFeed(NEURON_CORE, _set(True, True))
    assert feed.version == 1
    assert not feed.publish(_set(True, True))
    assert feed.version == 1
    assert feed.publish(_set(True, False))
    assert feed.version == 2


async def test_publish_rejects_other_resource() -> None:
    """A feed carries one resource only."""
    feed = DeviceFeed("snnrm.io/event-throughput")
    with pytest.raises(ValueError, match="cannot publish"):
        feed.publish(_set(True))


async def test_subscriber_gets_current_then_only_latest() -> None:
    """A subscriber sees the current set at once; sets published while it was busy collapse to the latest."""
    feed = DeviceFeed(NEURON_CORE, _set(True, True))
    it = feed.subscribe()
    first = await anext(it)
    assert first.healthy.tolist() == [True, True]
    feed.publish(_set(False, True))
    feed.publish(_set(False, False))
    feed.publish(_set(True, False))
    latest = await anext(it)
    assert latest.healthy.tolist() == [True, False]
    nxt = asyncio.ensure_future(anext(it))
    await _let_woken_tasks_run()
    assert not nxt.done()  # unchanged state sends nothing
    assert not feed.publish(_set(True, False))
    await _let_woken_tasks_run()
    assert not nxt.done()
    feed.publish(_set(True, True))
    assert (await asyncio.wait_for(nxt, 1)).healthy.tolist() == [True, True]


async def test_subscriber_waits_for_first_publication() -> None:
    """Before anything is published, a subscriber waits."""
    feed = DeviceFeed(NEURON_CORE)
    assert feed.current is None
    nxt = asyncio.ensure_future(anext(aiter(feed)))
    await _let_woken_tasks_run()
    assert not nxt.done()
    feed.publish(_set(True))
    assert (await asyncio.wait_for(nxt, 1)).ids == ("chip0-core0",)


async def test_changed_returns_on_a_publication_or_a_wake_and_at_once_when_already_newer() -> None:
    """``changed`` (what a ListAndWatch stream waits on) resumes on the next change, on ``wake`` without one,
    and not at all while neither happens; an equal set is not a change."""
    feed = DeviceFeed(NEURON_CORE, _set(True, True))
    await asyncio.wait_for(feed.changed(0), 1)  # version 1 is already newer than 0
    waiter = asyncio.ensure_future(feed.changed(feed.version))
    await _let_woken_tasks_run()
    feed.publish(_set(True, True))
    await _let_woken_tasks_run()
    assert not waiter.done()
    feed.publish(_set(False, True))
    await _let_woken_tasks_run()
    assert waiter.done()
    woken = asyncio.ensure_future(feed.changed(feed.version))
    await _let_woken_tasks_run()
    assert not woken.done()
    feed.wake()
    await _let_woken_tasks_run()
    assert woken.done()
    assert feed.version == 2  # a wake is not a change
