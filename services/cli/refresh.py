"""A view refreshed every few seconds until Ctrl-C, whose Ctrl-C never lands in a call.

A KeyboardInterrupt raised in the main thread while a blocking unary gRPC call is under
way can leave the channel's `close()` waiting for good (grpc/grpc#19973, #20026; seen
once in CI: `liveml rollout status --watch` did not exit within 20 s of Ctrl-C). So the
fetches run on a thread of their own and Ctrl-C only wakes the main thread, which stops
waiting; the fetch under way, if any, is cancelled by the channel's close (`connect`).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Generic, TypeVar, cast

T = TypeVar("T")


class _Fetch(Generic[T]):
    """One `fetch()` on a daemon thread: its result or its error, and when it is done."""

    def __init__(self, fetch: Callable[[], T], done: threading.Event) -> None:
        self._fetch, self._done = fetch, done
        self.result: T | None = None
        self.error: BaseException | None = None
        threading.Thread(target=self._run, name="refresh", daemon=True).start()

    def _run(self) -> None:
        try:
            self.result = self._fetch()
        except BaseException as exc:  # handed to the main thread, raised there
            self.error = exc
        finally:
            self._done.set()


def refreshed(fetch: Callable[[], T], every: float) -> Iterator[T]:
    """`fetch()`'s result every `every` seconds (the first after one interval) until
    Ctrl-C, which ends the iteration; an error of `fetch` is raised here."""
    woken = threading.Event()
    interrupted = False

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupted
        interrupted = True
        woken.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        # Between fetches only Ctrl-C sets `woken`: cleared before `interrupted` is
        # read, a Ctrl-C at any moment ends the loop at once or at the next wait.
        while not woken.wait(every):
            call = _Fetch(fetch, woken)
            woken.wait()  # the fetch is done, or Ctrl-C
            woken.clear()
            if interrupted:
                return
            if call.error is not None:
                raise call.error
            yield cast(T, call.result)
    finally:
        signal.signal(signal.SIGINT, previous)
