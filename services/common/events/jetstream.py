"""The event stream on NATS JetStream (`--event-stream nats://HOST:PORT`).

One stream (`--event-stream-name`) holds every event, on subjects
`<prefix>.<kind>.<model>` (a '.' in a model name is written %2E), so a reader or
consumer can filter by kind and model. Each event is published with its key as
`Nats-Msg-Id`: JetStream stores a key once within its duplicate window
(`--event-dedup-seconds`), and answers a duplicate with the stored copy's sequence.
A batch's publishes are written out together and their acks awaited at once. The
stream's sequence is the event's sequence. Retention is the stream's own limits (max
age, max bytes, oldest first); a reader asking for sequences below the stream's first
gets OutOfRange.

Each event gets its own PubAck, on every server version: JetStream's batch publishes
(ADR-50, nats-server >= 2.12) do not keep the dedup contract -- an atomic batch holding a
key stored before is refused whole, a fast-ingest batch skips it without saying which
event it was or its sequence -- and they do not save the server's CPU, which storing
the message takes (bench/RESULTS.md, "Event stream", #17).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api
from nats.js.errors import NotFoundError

from services.common.errors import InvalidArgument, OutOfRange, ServiceError, Unavailable
from services.common.events import (
    DEFAULT_BATCH,
    KIND_NAMES,
    Appended,
    Batch,
    Encoded,
    Start,
    Stats,
    retention_gap,
)
from services.common.events.consumer import wanted
from services.common.events.jetstream_acks import AckChunk, AckClient, pub_ack
from services.common.gen.liveml.events.v1 import events_pb2 as epb

log = logging.getLogger(__name__)

PUBLISH_CHUNK = 2000  # events in flight at once (acks awaited per chunk)
RECONNECT_SECONDS = 1.0  # least time between two attempts to connect
POLL_SECONDS = 1.0  # longest a following read waits for new events per fetch


_NEWLINES = str.maketrans("\r\n", "  ")


def subject_token(model: str) -> str:
    return model.replace("%", "%25").replace(".", "%2E")


class JetStreamEvents:
    backend = "nats"

    def __init__(
        self,
        url: str,
        *,
        stream: str = "LIVEML_EVENTS",
        prefix: str = "liveml.events",
        retention_seconds: float = 7 * 86400,
        retention_bytes: int = 1 << 30,
        dedup_seconds: float = 600,
        timeout: float = 5.0,
        name: str = "liveml",
    ) -> None:
        self.url = url
        self.stream = stream
        self.prefix = prefix
        self.retention_seconds = retention_seconds
        self.retention_bytes = retention_bytes
        self.dedup_seconds = min(dedup_seconds, retention_seconds)
        self.timeout = timeout
        self.name = name
        self._nc: NATS | None = None
        self._closing = False
        self._lock = asyncio.Lock()
        self._acks: dict[str, AckChunk] = {}
        self._subjects: dict[tuple[int, str], bytes] = {}  # "HPUB <subject>", by kind, model
        self._inbox = ""
        self._token = 0
        self._last_attempt = 0.0
        self._where = urlsplit(url).hostname or url  # never the credentials a URL may carry

    # --- connection ------------------------------------------------------------------

    async def _connection(self) -> NATS:
        nc = self._nc
        if nc is not None and nc.is_connected:
            return nc
        if nc is not None and not nc.is_closed:
            raise Unavailable(f"NATS at {self._where} is reconnecting")
        async with self._lock:
            if self._nc is not None and self._nc.is_connected:
                return self._nc
            wait = self._last_attempt + RECONNECT_SECONDS - time.monotonic()
            if wait > 0:
                raise Unavailable(f"NATS at {self._where} is unreachable (retrying)")
            self._last_attempt = time.monotonic()
            nc = AckClient()

            async def on_error(exc: Exception) -> None:
                log.debug("NATS: %s", exc)

            async def on_disconnect() -> None:
                if not self._closing:
                    log.warning("NATS at %s: disconnected; reconnecting", self._where)

            async def on_reconnect() -> None:
                log.info("NATS at %s: reconnected", self._where)

            try:
                await nc.connect(
                    servers=[self.url],
                    name=self.name,
                    connect_timeout=2,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    error_cb=on_error,
                    disconnected_cb=on_disconnect,
                    reconnected_cb=on_reconnect,
                )
                self._inbox = nc.new_inbox()
                sub = await nc.subscribe(f"{self._inbox}.*", cb=self._on_ack)
                # A reconnect subscribes again under the same id.
                nc.ack_sid, nc.on_ack = sub._id, self._on_raw_ack
                await self._ensure_stream(nc.jetstream(timeout=self.timeout))
            except Exception as exc:  # the client's connection errors vary
                with contextlib.suppress(Exception):
                    await nc.close()
                raise Unavailable(f"NATS at {self._where} is unreachable: {exc}") from None
            self._nc = nc
            return nc

    async def _jetstream(self) -> Any:
        return (await self._connection()).jetstream(timeout=self.timeout)

    def _config(self) -> api.StreamConfig:
        return api.StreamConfig(
            name=self.stream,
            subjects=[f"{self.prefix}.>"],
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.OLD,
            storage=api.StorageType.FILE,
            max_age=self.retention_seconds,
            max_bytes=self.retention_bytes,
            duplicate_window=self.dedup_seconds,
        )

    async def _ensure_stream(self, js: Any) -> None:
        config = self._config()
        try:
            info = await js.stream_info(self.stream)
        except NotFoundError:
            await js.add_stream(config)
            return
        have = info.config
        if (have.max_age, have.max_bytes, have.duplicate_window) != (
            config.max_age,
            config.max_bytes,
            config.duplicate_window,
        ):
            await js.update_stream(config)

    async def close(self) -> None:
        self._closing = True
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
            self._nc = None

    # --- append ----------------------------------------------------------------------

    def subject(self, kind: int, model: str) -> str:
        return f"{self.prefix}.{KIND_NAMES[kind]}.{subject_token(model)}"

    def _on_raw_ack(self, subject: bytes, data: bytes, headers: bytes) -> None:
        """A PubAck as the parser read it (the subject `<inbox>.<chunk>-<index>`)."""
        chunk_id, _, index = subject.rpartition(b".")[2].partition(b"-")
        chunk = self._acks.get(chunk_id.decode())
        if chunk is None or chunk.done.done():
            return
        if headers and headers.startswith(b"NATS/1.0 503"):
            chunk.fail(Unavailable(f"JetStream has no stream for {subject.decode()}"))
            return
        ack = pub_ack(data)
        if isinstance(ack, Exception):
            chunk.fail(ack)
            return
        chunk.acked(int(index), ack)

    async def _on_ack(self, msg: Msg) -> None:
        """The same through nats-py's own delivery (never used while AckClient takes
        the acks off the parser; kept so a client without that hook still works)."""
        chunk_id, _, index = msg.subject.rpartition(".")[2].partition("-")
        chunk = self._acks.get(chunk_id)
        if chunk is None or chunk.done.done():
            return
        if msg.headers and msg.headers.get("Status") == "503":
            chunk.fail(Unavailable(f"JetStream has no stream for {msg.subject}"))
            return
        ack = pub_ack(msg.data)
        if isinstance(ack, Exception):
            chunk.fail(ack)
            return
        chunk.acked(int(index), ack)

    async def append(self, events: Sequence[Encoded]) -> Appended:
        result = Appended()
        for start in range(0, len(events), PUBLISH_CHUNK):
            acks = await self._publish(events[start : start + PUBLISH_CHUNK])
            result.sequences += [sequence for sequence, _ in acks]
            result.duplicates += [duplicate for _, duplicate in acks]
        return result

    def _frames(self, events: Sequence[Encoded], reply: str, max_payload: int) -> bytes:
        """The chunk's HPUB commands, written out at once: publishing them one by one
        through the client costs more Python than everything else of an append."""
        parts: list[bytes] = []
        subjects = self._subjects
        prefix = f" {reply}-".encode()
        for i, event in enumerate(events):
            # A key is data: it must not end the header line (nats-py would strip it too).
            key = event.key
            if "\r" in key or "\n" in key:
                key = key.translate(_NEWLINES)
            header = b"NATS/1.0\r\nNats-Msg-Id: %s\r\n\r\n" % key.encode()
            data = event.data
            size = len(header) + len(data)
            if size > max_payload:
                raise InvalidArgument(
                    f"an event of {size} bytes is over NATS's max_payload of {max_payload}"
                )
            subject = subjects.get((event.kind, event.model))
            if subject is None:
                subject = b"HPUB " + self.subject(event.kind, event.model).encode()
                if len(subjects) < 10_000:  # models are few; a bound all the same
                    subjects[(event.kind, event.model)] = subject
            parts += (subject, prefix, b"%d %d %d\r\n" % (i, len(header), size), header, data)
            parts.append(b"\r\n")
        return b"".join(parts)

    async def _publish(self, events: Sequence[Encoded]) -> list[tuple[int, bool]]:
        nc = await self._connection()
        self._token += 1
        chunk_id = str(self._token)
        chunk = AckChunk(len(events))
        self._acks[chunk_id] = chunk
        try:
            frames = self._frames(events, f"{self._inbox}.{chunk_id}", nc.max_payload)
            await nc._send_command(frames)
            await nc._flush_pending()
            async with asyncio.timeout(self.timeout):
                return await chunk.done
        except TimeoutError:
            raise Unavailable(
                f"JetStream at {self._where} did not acknowledge {len(events)} events "
                f"within {self.timeout} s"
            ) from None
        except ServiceError:
            raise
        except Exception as exc:  # the client's errors (its buffer full, closed)
            raise Unavailable(f"NATS at {self._where}: {exc}") from None
        finally:
            self._acks.pop(chunk_id, None)
            if not chunk.done.done():
                chunk.done.cancel()
            elif not chunk.done.cancelled():
                chunk.done.exception()  # retrieved: a failed chunk is reported once

    # --- read ------------------------------------------------------------------------

    def filter(self, model: str, kinds: Sequence[int]) -> str:
        kind = KIND_NAMES[kinds[0]] if len(set(kinds)) == 1 else "*"
        return f"{self.prefix}.{kind}.{subject_token(model) if model else '*'}"

    async def bounds(self) -> tuple[int, int]:
        """(first, last) sequence the stream holds; first = last + 1 when it holds none."""
        js = await self._jetstream()
        try:
            state = (await js.stream_info(self.stream)).state
        except Exception as exc:
            raise Unavailable(f"JetStream at {self._where}: {exc}") from None
        last = int(state.last_seq)
        first = int(state.first_seq) if state.messages else last + 1
        return max(first, 1), last

    async def _check_gap(self, after: int) -> int:
        first, _ = await self.bounds()
        gap = retention_gap(after, first, Start.START_AFTER_SEQUENCE)
        if gap is not None:
            raise OutOfRange(gap)
        return first

    async def subscribe(
        self,
        after: int,
        model: str,
        kinds: Sequence[int],
        durable: str | None = None,
    ) -> Any:
        """A pull subscription delivering from `after + 1` (a durable one is recreated
        there, so nothing delivered to an earlier incarnation is in flight)."""
        js = await self._jetstream()
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=after + 1,
            filter_subject=self.filter(model, kinds),
        )
        if durable is None:
            config.ack_policy = api.AckPolicy.NONE
            config.inactive_threshold = 60.0
            config.mem_storage = True
        else:
            config.ack_policy = api.AckPolicy.ALL
            config.ack_wait = 30.0
            config.max_ack_pending = 20_000
            with contextlib.suppress(NotFoundError):
                await js.delete_consumer(self.stream, durable)
        try:
            return await js.pull_subscribe(
                config.filter_subject, durable=durable, stream=self.stream, config=config
            )
        except Exception as exc:
            raise Unavailable(f"JetStream at {self._where}: {exc}") from None

    async def read(
        self,
        after: int = 0,
        *,
        start: int = Start.START_AFTER_SEQUENCE,
        model: str = "",
        kinds: Sequence[int] = (),
        follow: bool = False,
        max_batch: int = DEFAULT_BATCH,
    ) -> AsyncIterator[Batch]:
        first, last = await self.bounds()
        if start == Start.START_LATEST:
            after = last
        elif start == Start.START_OLDEST:
            after = first - 1
        else:
            await self._check_gap(after)
        sub = await self.subscribe(after, model, kinds)
        try:
            pending = (await sub.consumer_info()).num_pending
            checked = False
            reported = time.monotonic()
            while True:
                if not pending and not follow:
                    await self._check_gap(after)
                    return
                _, last = await self.bounds()
                try:
                    msgs = await sub.fetch(max_batch, timeout=POLL_SECONDS if follow else 5.0)
                except nats.errors.TimeoutError:
                    msgs = []
                if not checked:
                    # The consumer starts at the stream's first sequence when retention
                    # removed the asked ones after the check above: check again.
                    first = await self._check_gap(after)
                    checked = True
                out = []
                for msg in msgs:
                    meta = msg.metadata
                    sequence = meta.sequence.stream
                    pending = meta.num_pending
                    if sequence <= after:
                        continue
                    event = epb.Event.FromString(msg.data)
                    event.sequence = sequence
                    after = sequence
                    if wanted(event, model, kinds):
                        out.append(event)
                if out:
                    yield Batch(out, after, first, max(last, after))
                    reported = time.monotonic()
                elif not msgs and follow and last > after:
                    # Everything up to `last` (read before the fetch that found nothing)
                    # matching the filter was delivered: the reader is through it.
                    after = last
                    if time.monotonic() - reported >= POLL_SECONDS * 5:
                        yield Batch([], after, first, last)
                        reported = time.monotonic()
                elif not msgs and not follow:
                    pending = 0
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def consumer(
        self, name: str, after: int, model: str = "", kinds: Sequence[int] = ()
    ) -> JetStreamConsumer:
        await self._check_gap(after)
        consumer = JetStreamConsumer(self, name, after, model, kinds)
        consumer.sub = await self.subscribe(after, model, kinds, durable=name)
        return consumer

    # --- stats -----------------------------------------------------------------------

    async def stats(self, model: str = "") -> Stats:
        js = await self._jetstream()
        try:
            info = await js.stream_info(
                self.stream, subjects_filter=self.filter(model, ()) if model else f"{self.prefix}.>"
            )
            consumers = await js.consumers_info(self.stream)
        except Exception as exc:
            raise Unavailable(f"JetStream at {self._where}: {exc}") from None
        counts: dict[int, int] = {}
        by_name = {name: kind for kind, name in KIND_NAMES.items()}
        for subject, count in (info.state.subjects or {}).items():
            kind = by_name.get(subject[len(self.prefix) + 1 :].split(".", 1)[0])
            if kind is not None:
                counts[kind] = counts.get(kind, 0) + count
        state = info.state
        last = int(state.last_seq)
        first = int(state.first_seq) if state.messages else last + 1
        return Stats(
            backend=self.backend,
            counts=counts,
            first_sequence=max(first, 1),
            last_sequence=last,
            oldest_us=_us(getattr(state, "first_ts", None)),
            newest_us=_us(getattr(state, "last_ts", None)),
            bytes=int(state.bytes),
            retention_seconds=float(info.config.max_age or 0) or float("inf"),
            retention_bytes=int(info.config.max_bytes or -1),
            consumers=[
                (c.name, int(c.ack_floor.stream_seq if c.ack_floor else 0), int(c.num_pending))
                for c in consumers
                if c.config.durable_name
            ],
        )


def _us(stamp: Any) -> int:
    if not stamp:
        return 0
    from datetime import datetime

    try:
        return int(datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp() * 1e6)
    except ValueError:
        return 0


class JetStreamConsumer:
    """A durable pull consumer: acks (AckPolicy ALL) after its owner committed."""

    def __init__(
        self, owner: JetStreamEvents, name: str, after: int, model: str, kinds: Sequence[int]
    ) -> None:
        self.owner = owner
        self.name = name
        self.position = after
        self.model = model
        self.kinds = list(kinds)
        self.sub: Any = None
        self._delivered = after
        self._next_delivery = 1
        self._msgs: dict[int, Msg] = {}

    async def fetch(self, max_events: int = 500, wait: float = 1.0) -> list[epb.Event]:
        try:
            msgs = await self.sub.fetch(max_events, timeout=wait)
        except nats.errors.TimeoutError:
            return []
        except Exception as exc:
            raise Unavailable(f"JetStream: {exc}") from None
        out = []
        for msg in msgs:
            meta = msg.metadata
            if meta.sequence.consumer != self._next_delivery:
                # A delivery never reached us (a reconnect mid-fetch): start over after
                # the last event handed out, so none is skipped or seen out of order.
                log.warning("consumer %s: deliveries lost in transit; resubscribing", self.name)
                self.sub = await self.owner.subscribe(
                    self._delivered, self.model, self.kinds, durable=self.name
                )
                self._next_delivery = 1
                self._msgs.clear()
                break
            self._next_delivery += 1
            sequence = meta.sequence.stream
            if sequence <= self._delivered:
                continue  # delivered before (a redelivery): its effects are the owner's
            self._delivered = sequence
            self._msgs[sequence] = msg
            event = epb.Event.FromString(msg.data)
            event.sequence = sequence
            if wanted(event, self.model, self.kinds):
                out.append(event)
        return out

    async def ack(self, sequence: int) -> None:
        """Ack through `sequence` (its owner's state is committed through it)."""
        self.position = max(self.position, sequence)
        done = [s for s in self._msgs if s <= sequence]
        if not done:
            return
        msg = self._msgs[max(done)]
        for s in done:
            del self._msgs[s]
        try:
            await msg.ack_sync(timeout=self.owner.timeout)
        except Exception as exc:
            # Not fatal: a consumer that restarts resumes from its own position.
            log.warning("consumer %s: ack through %d failed: %s", self.name, sequence, exc)

    async def close(self) -> None:
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()
