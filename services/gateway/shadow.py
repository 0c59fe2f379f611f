"""Shadow traffic: copies of answered requests, handed to the gateway's shadow process.

A copy is offered only after the primary answered, and the gateway's whole part in it
is to buffer it: the buffer goes to a socket in one write every `FLUSH_SECONDS` (or
`FLUSH_COPIES` copies). A child process (`services.gateway.shadow_process`), at
idle CPU priority, sends each copy to a worker of the mirror version, compares the
answer with the primary's (argmax equality, or relative error for numbers), times it,
and reports what it counted every `REPORT_SECONDS`; those tallies land in this
gateway's metrics. Copies wait in bounded buffers whose overflow is dropped and
counted, so neither a slow or failing mirror nor a busy core can delay or fail a
client's request: handling a copy only gets CPU time nothing else wants.

The child starts with the first copy, so a gateway whose rollouts name no mirror runs
none, and it is started again when it dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import pickle
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from services.dataplane import frames
from services.gateway import metrics
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

# Copies written but not yet taken by the shadow process, at most (beyond the socket's
# own buffer); more are dropped.
BUFFER_BYTES = 32 << 20
# Copies are written in batches, at most this long after the first one: the shadow
# process, the link and a mirror worker then handle each batch at once, which takes
# the cores (and their caches) from clients' requests a few times a second instead
# of once per request.
FLUSH_SECONDS = 0.05
FLUSH_COPIES = 64
REPORT_SECONDS = 0.5
RESTART_SECONDS = 1.0
STOP_SECONDS = 5.0
MODULE = "services.gateway.shadow_process"


@dataclass(frozen=True)
class Copy:
    model: str
    version: int
    request: bytes  # the client's request (`version` answers it)
    primary: bytes  # the primary's serialized answer
    workers: tuple[tuple[str, str], ...]  # (address, framed listener's or "") to choose from
    offered: float  # time.monotonic() when offered: the clock is the host's, shared


@dataclass(frozen=True)
class ShadowConfig:
    """What the shadow process needs of the gateway's settings."""

    worker_ca: str | None
    worker_cert: str | None
    worker_key: str | None
    worker_tls_name: str | None
    worker_token: str | None  # the gateway's own token toward workers (never logged)
    max_message_bytes: int
    timeout: float  # longest a copy waits for its answer, seconds
    max_wait: float  # longest a copy waits to be started, from its offer, seconds
    capacity: int  # copies waiting in the shadow process at most
    priority: str  # OS priority: idle, low or normal
    log_level: str


@dataclass
class Tally:
    """What the shadow process counted since its last report (see `Shadow._fold`)."""

    counts: dict[tuple[str, str, str, str], int]  # as metrics.Requests
    latency: dict[tuple[str, str, str], list[float]]
    compared: dict[tuple[str, str, str], int]  # (model, version, "yes"/"no")
    dropped: dict[tuple[str, str], int]


class Shadow:
    """The gateway's side of shadow traffic: offers copies, folds the reports in."""

    def __init__(
        self, config: ShadowConfig, forward_address: Callable[[str], str | None] = lambda _: None
    ) -> None:
        self.config = config
        self.forward_address = forward_address
        self.process: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._pending: list[tuple[tuple[str, str], bytes]] = []  # framed copies not yet written
        self._flush_at: asyncio.TimerHandle | None = None

    def offer(
        self, model: str, version: int, request: bytes, primary: bytes, workers: Sequence[str]
    ) -> None:
        """Copy the client's `request` to one of `workers`, for the mirror `version`."""
        labels = (model, str(version))
        if not workers:  # no worker holds the mirror READY: it failed to answer
            metrics.REQUESTS.record(*labels, "shadow", "ERROR", 0.0)
            return
        if self._task is None and not self._closing:
            self._task = asyncio.create_task(self._supervise(), name="shadow-process")
        writer = self._writer
        if writer is None or writer.transport.get_write_buffer_size() > BUFFER_BYTES:
            metrics.SHADOW_DROPPED.labels(*labels).inc()
            return
        where = tuple((w, self.forward_address(w) or "") for w in workers)
        copy = Copy(model, version, request, primary, where, time.monotonic())
        # Pickle, because both ends are this program: the child was started by this
        # process, on a socket pair nobody else holds.
        self._pending.append((labels, frames.frame(pickle.dumps(copy, pickle.HIGHEST_PROTOCOL))))
        if len(self._pending) >= FLUSH_COPIES:
            self._flush()
        elif self._flush_at is None:
            self._flush_at = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self._flush)

    def _flush(self) -> None:
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        pending, self._pending = self._pending, []
        if self._writer is not None:
            self._writer.write(b"".join(data for _, data in pending))
            return
        for labels, _ in pending:  # the shadow process died since they were offered
            metrics.SHADOW_DROPPED.labels(*labels).inc()

    async def _supervise(self) -> None:
        while True:
            try:
                code = await self._run_process()
            except Exception:  # whatever went wrong, copies must keep their process
                log.exception("the shadow process failed")
                code = None
            if self._closing:
                return
            log.warning(
                "the shadow process exited (%s); starting another in %g s",
                code,
                RESTART_SECONDS,
            )
            await asyncio.sleep(RESTART_SECONDS)

    async def _run_process(self) -> int:
        """Start the shadow process, fold in its reports until it ends; its exit code."""
        ours, theirs = socket.socketpair()
        with theirs:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                MODULE,
                str(theirs.fileno()),
                pass_fds=[theirs.fileno()],
                # Not in the terminal's process group: a Ctrl-C stops the gateway,
                # which ends this process by closing its socket. Outside containers,
                # where the kernel schedules sessions as groups (autogroups), a session
                # of its own, whose group the process then lowers to nice 19, moved
                # clients' p99 less than an idle process in the gateway's group did:
                # the fewer copies the shared core completes, the less they cost
                # (bench/RESULTS.md).
                start_new_session=True,
            )
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        writer.write(frames.frame(json.dumps(asdict(self.config)).encode()))
        self._writer = writer
        try:
            while (data := await frames.read(reader, 64 << 20)) is not None:
                _fold(pickle.loads(data))
        except (OSError, asyncio.IncompleteReadError, frames.FrameError) as exc:
            log.warning("lost the shadow process: %s", exc)
        finally:
            self._writer = None
            writer.close()
        return await self.process.wait()

    async def close(self) -> None:
        """End the shadow process: it stops at the end of its input (killed if it lingers)."""
        self._closing = True
        if self._writer is not None:
            self._writer.close()
        process = self.process
        if process is not None and process.returncode is None:
            try:
                async with asyncio.timeout(STOP_SECONDS):
                    await process.wait()
            except TimeoutError:
                log.warning("the shadow process did not stop within %g s; killed", STOP_SECONDS)
                process.kill()
                await process.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _fold(tally: Tally) -> None:
    for key, count in tally.counts.items():
        metrics.REQUESTS.counts[key] = metrics.REQUESTS.counts.get(key, 0) + count
    for hist_key, buckets in tally.latency.items():
        mine = metrics.REQUESTS.latency.setdefault(hist_key, [0.0] * len(buckets))
        for i, value in enumerate(buckets):
            mine[i] += value
    for (model, version, same), count in tally.compared.items():
        metrics.SHADOW_COMPARED.labels(model, version, same).inc(count)
    for (model, version), count in tally.dropped.items():
        metrics.SHADOW_DROPPED.labels(model, version).inc(count)


def config_of(settings: GatewaySettings, worker_token: str | None = None) -> ShadowConfig:
    """The shadow process's part of a GatewaySettings."""
    return ShadowConfig(
        worker_ca=str(settings.worker_ca) if settings.worker_ca else None,
        worker_cert=str(settings.worker_cert) if settings.worker_cert else None,
        worker_key=str(settings.worker_key) if settings.worker_key else None,
        worker_tls_name=settings.worker_tls_name,
        worker_token=worker_token,
        max_message_bytes=settings.max_message_bytes,
        timeout=settings.default_timeout,
        max_wait=settings.shadow_max_wait,
        capacity=settings.shadow_queue,
        priority=settings.shadow_priority,
        log_level=settings.log_level,
    )
