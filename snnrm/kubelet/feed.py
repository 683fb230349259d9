"""The latest device list of one resource, and a coalescing stream of it for ListAndWatch.

The health pipeline publishes a complete :class:`DeviceSet` whenever it recomputes health; most publications
change nothing and must send nothing. A subscriber (one per ListAndWatch stream) gets the current set at once,
then, after each change, only the *latest* set: a slow stream skips intermediate states instead of queueing
them, which is what the kubelet wants, since every message is the complete list anyway.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from snnrm.core.devices import DeviceSet


class DeviceFeed:
    """Holds the current :class:`DeviceSet` of ``resource``; ``version`` grows by one per real change.

    ``publish`` is synchronous (it only swaps a reference and wakes waiters) and must be called from the
    event loop's thread.
    """

    def __init__(self, resource: str, initial: DeviceSet | None = None) -> None:
        self.resource = resource
        self._current: DeviceSet | None = None
        self._version = 0
        self._changed = asyncio.Event()
        if initial is not None:
            self.publish(initial)

    @property
    def current(self) -> DeviceSet | None:
        """The latest published set (``None`` before the first publication)."""
        return self._current

    @property
    def version(self) -> int:
        """0 before the first publication; increases by one on every publication that changed something."""
        return self._version

    def publish(self, devices: DeviceSet) -> bool:
        """Make ``devices`` current; returns False (and wakes nobody) if it says nothing new."""
        if devices.resource != self.resource:
            raise ValueError(f"feed of {self.resource} cannot publish devices of {devices.resource}")
        if devices.same_as(self._current):
            return False
        self._current = devices
        self._version += 1
        self.wake()
        return True

    def wake(self) -> None:
        """Wake every waiter of this generation (later waiters wait on a fresh event). Called by :meth:`publish`,
        and without a change by a stream that is ending, so it re-checks its state."""
        woken, self._changed = self._changed, asyncio.Event()
        woken.set()

    async def changed(self, version: int) -> None:
        """Return once the version differs from ``version`` or :meth:`wake` was called: one wait on one event, so
        a publication resumes the waiter in the next turn of the loop (the kubelet's 5 ms budget)."""
        if self._version == version:
            await self._changed.wait()

    async def wait_newer(self, version: int) -> int:
        """Return the current version once it differs from ``version`` (at once if it already does)."""
        while self._version == version:
            await self.changed(version)
        return self._version

    async def subscribe(self) -> AsyncIterator[DeviceSet]:
        """Yield the current set now (once there is one), then the latest set after each change."""
        seen = 0
        while True:
            seen = await self.wait_newer(seen)
            current = self._current
            assert current is not None  # version > 0 implies a publication
            yield current

    def __aiter__(self) -> AsyncIterator[DeviceSet]:
        return self.subscribe()
