"""Waiting on a condition with a deadline (tests never synchronise by sleeping)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T], within: float = 10.0, what: str = "condition") -> T:
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within} s waiting for {what}")
        time.sleep(0.02)  # poll interval of a deadline wait (noqa: sleep-ok)


async def async_wait_until(
    check: Callable[[], Awaitable[T] | T], within: float = 10.0, what: str = "condition"
) -> T:
    """Like wait_until, without blocking the event loop; `check` may be sync or async."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        value: T = await result if inspect.isawaitable(result) else result  # type: ignore[assignment]
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.02)  # poll interval of a deadline wait (noqa: sleep-ok)
