"""The newest revision a registry process knows of, and a way to wait for a newer one:
what wakes the change feed's reader (writes here, NOTIFY from other processes, polls)."""

from __future__ import annotations

import asyncio
import contextlib


class ChangeHub:
    """The newest revision this process knows of, and a way to wait for a newer one."""

    def __init__(self) -> None:
        self.revision = 0
        self.closed = False
        self._changed = asyncio.Event()

    def close(self) -> None:
        """Wake every watcher for good: the server is stopping."""
        self.closed = True
        self._changed.set()

    def notify(self, revision: int) -> None:
        if revision > self.revision:
            self.revision = revision
            self._changed.set()
            self._changed = asyncio.Event()

    async def wait_beyond(self, revision: int, within: float) -> bool:
        if self.revision > revision or self.closed:
            return True
        changed = self._changed
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await changed.wait()
        return self.revision > revision
