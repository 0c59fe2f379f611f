"""One contract, every backend of the event stream: the registry's table on SQLite and
on PostgreSQL (through a real registry's RPCs), and NATS JetStream on the machine's
server (`nats`, Debian's 2.9.10 in CI) and on the venv's pinned one (`nats-venv`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.common.errors import OutOfRange
from services.common.events import Start, encode
from services.common.gen.liveml.events.v1 import events_pb2 as epb
from tests.helpers.events import backend, example, read_all
from tests.helpers.wait import async_wait_until

BACKENDS = [
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("nats", marks=pytest.mark.nats),
    pytest.param("nats-venv", marks=pytest.mark.nats),
]
pytestmark = pytest.mark.parametrize("kind", BACKENDS)


async def test_order_and_content(kind: str, tmp_path: Path) -> None:
    async with backend(kind, tmp_path) as b:
        sent = [example(i, model="a" if i % 2 else "b") for i in range(1, 251)]
        sequences = []
        for start in range(0, 250, 100):
            appended = await b.stream.append(sent[start : start + 100])
            assert not any(appended.duplicates)
            sequences += appended.sequences
        assert sequences == sorted(sequences) and len(set(sequences)) == 250
        read = await read_all(b.stream, max_batch=64)
        assert [e.sequence for e in read] == sequences
        assert [e.example.features[0] for e in read] == list(range(1, 251))
        only_a = await read_all(b.stream, model="a")
        assert [e.example.features[0] for e in only_a] == list(range(1, 251, 2))
        assert await read_all(b.stream, model="a", kinds=[epb.EVENT_KIND_FEEDBACK]) == []
        later = await read_all(b.stream, sequences[199])
        assert [e.sequence for e in later] == sequences[200:]


async def test_dedup_by_key(kind: str, tmp_path: Path) -> None:
    async with backend(kind, tmp_path) as b:
        first = await b.stream.append([example(1, key="k1"), example(2, key="k2")])
        again = await b.stream.append(
            [example(3, key="k2"), example(4, key="k3"), example(5, key="k3")]
        )
        assert again.duplicates == [True, False, True]
        assert again.sequences[0] == first.sequences[1]  # the stored copy's sequence
        assert again.sequences[2] == again.sequences[1]
        assert (again.stored, again.duplicate_count) == (1, 2)
        read = await read_all(b.stream)
        assert [e.key for e in read] == ["k1", "k2", "k3"]
        assert [e.example.features[0] for e in read] == [1, 2, 4]  # the first copy kept
        stats = await b.stream.stats()
        assert stats.counts == {epb.EVENT_KIND_EXAMPLE: 3}


async def test_a_following_reader_gets_new_events(kind: str, tmp_path: Path) -> None:
    async with backend(kind, tmp_path) as b:
        await b.stream.append([example(1)])
        seen: list[int] = []

        async def follow() -> None:
            async for batch in b.stream.read(0, follow=True):
                seen.extend(e.sequence for e in batch.events)

        task = asyncio.create_task(follow())
        try:
            await async_wait_until(lambda: len(seen) == 1, 10, "the first event")
            appended = await b.stream.append([example(2), example(3)])
            await async_wait_until(lambda: len(seen) == 3, 10, "the events appended later")
            assert seen[1:] == appended.sequences
            latest: list[int] = []

            async def from_latest() -> None:
                async for batch in b.stream.read(start=Start.START_LATEST, follow=True):
                    latest.extend(e.sequence for e in batch.events)

            tail = asyncio.create_task(from_latest())
            await asyncio.sleep(0)  # lets the reader start; the check below waits (noqa: sleep-ok)
            try:
                appended_4 = None

                async def appended_seen() -> bool:
                    nonlocal appended_4
                    if appended_4 is None or not latest:
                        appended_4 = (await b.stream.append([example(len(seen) + 10)])).sequences
                    return bool(latest)

                await async_wait_until(appended_seen, 10, "a reader from the latest")
                assert latest[0] > 3  # nothing from before it started
            finally:
                tail.cancel()
        finally:
            task.cancel()


async def test_resume_after_consumer_restarts_misses_and_repeats_nothing(
    kind: str, tmp_path: Path
) -> None:
    """10,000 events; the consumer commits its state every few hundred, and dies three
    times: after a commit before its ack, mid-batch before committing, and cleanly."""
    async with backend(kind, tmp_path) as b:
        total = 10_000
        for start in range(0, total, 1000):
            await b.stream.append([example(i) for i in range(start + 1, start + 1001)])
        committed: list[int] = []  # the consumer's durable state: what it applied
        position = 0
        crashes = {2500: "before_ack", 5000: "before_commit", 7500: "clean"}
        consumer = await b.stream.consumer("resume-test", position)
        applied: list[int] = []  # applied since the last commit (lost on a crash)
        while len(committed) < total:
            events = await consumer.fetch(300, wait=5.0)
            assert events, f"stalled at {len(committed)} of {total}"
            for event in events:
                assert event.sequence > position, "an event at or below the committed position"
                applied.append(int(event.example.features[0]))
            crash = next(
                (c for at, c in crashes.items() if len(committed) + len(applied) >= at), None
            )
            if crash == "before_commit":
                applied = []  # lost with the process
            else:
                committed += applied
                applied = []
                position = events[-1].sequence
                if crash != "before_ack":
                    await consumer.ack(position)
            if crash is not None:
                del crashes[next(at for at, c in crashes.items() if c == crash)]
                await consumer.close()
                consumer = await b.stream.consumer("resume-test", position)
        await consumer.close()
        assert committed == list(range(1, total + 1))


async def test_retention_by_size_and_the_clear_error(kind: str, tmp_path: Path) -> None:
    async with backend(kind, tmp_path, retention_bytes=64 * 1024) as b:
        for start in range(0, 1200, 200):
            await b.stream.append([example(i, size=300) for i in range(start + 1, start + 201)])

        async def trimmed() -> bool:
            stats = await b.stream.stats()
            return stats.first_sequence > 1 and stats.bytes <= 64 * 1024

        await async_wait_until(trimmed, 20, "retention to remove the oldest events")
        stats = await b.stream.stats()
        first = stats.first_sequence
        assert stats.last_sequence == 1200
        with pytest.raises(OutOfRange) as err:
            await read_all(b.stream, 0)
        assert err.value.code.name == "OUT_OF_RANGE"
        assert err.value.message == (
            f"events 1 to {first - 1} were removed by retention; the stream now starts at "
            f"sequence {first} (read with START_OLDEST to go on from there)"
        )
        with pytest.raises(OutOfRange):
            await b.stream.consumer("late", 5)
        kept = await read_all(b.stream, start=Start.START_OLDEST)
        assert [e.sequence for e in kept] == list(range(first, 1201))
        assert [e.sequence for e in await read_all(b.stream, first - 1)] == list(range(first, 1201))


async def test_retention_by_age(kind: str, tmp_path: Path) -> None:
    async with backend(kind, tmp_path, retention_seconds=1.0, dedup_seconds=1.0) as b:
        appended = await b.stream.append([example(i) for i in range(1, 11)])

        async def aged() -> bool:
            return (await b.stream.stats()).first_sequence > appended.sequences[-1]

        await async_wait_until(aged, 20, "events older than a second to go")
        with pytest.raises(OutOfRange) as err:
            await read_all(b.stream, 3)
        assert "events 4 to 10 were removed by retention" in err.value.message
        assert await read_all(b.stream, start=Start.START_OLDEST) == []
        again = await b.stream.append([example(11)])
        assert again.sequences == [11]


async def test_events_of_every_kind_round_trip(kind: str, tmp_path: Path) -> None:
    async with backend(kind, tmp_path) as b:
        prediction = epb.Event(
            kind=epb.EVENT_KIND_PREDICTION,
            model="m.v2",
            key="p1",
            prediction=epb.Prediction(
                request_id="r1", version=2, request=b"\x00\x01", response=b"x"
            ),
        )
        feedback = epb.Event(
            kind=epb.EVENT_KIND_FEEDBACK,
            model="m.v2",
            key="f1",
            feedback=epb.Feedback(request_id="r1", groups={"region": "eu"}),
        )
        feedback.feedback.ground_truth.class_index = 1
        await b.stream.append([encode(prediction), encode(feedback)])
        read = await read_all(b.stream, model="m.v2")
        assert [e.kind for e in read] == [epb.EVENT_KIND_PREDICTION, epb.EVENT_KIND_FEEDBACK]
        assert read[0].prediction == prediction.prediction
        assert read[1].feedback == feedback.feedback
        only = await read_all(b.stream, model="m.v2", kinds=[epb.EVENT_KIND_FEEDBACK])
        assert [e.key for e in only] == ["f1"]
        counts = (await b.stream.stats("m.v2" if kind.startswith("nats") else "")).counts
        assert counts == {epb.EVENT_KIND_PREDICTION: 1, epb.EVENT_KIND_FEEDBACK: 1}


async def test_concurrent_appends_each_get_their_own_answer(kind: str, tmp_path: Path) -> None:
    """Many small appends at once (the SQL log writes them together): each caller gets
    the sequences of its own events, a key sent by two callers is stored once, and the
    stream holds every event once in the order of its sequences."""
    async with backend(kind, tmp_path) as b:
        calls = [
            [example(100 * c + j, key=f"c{c}-{j}") for j in range(1 + c % 3)] for c in range(120)
        ]
        calls.append([example(9001, key="c0-0")])  # the first caller's key again
        answers = await asyncio.gather(*(b.stream.append(events) for events in calls))
        for events, answer in zip(calls[1:-1], answers[1:-1], strict=True):
            assert len(answer.sequences) == len(events) and not any(answer.duplicates)
        # Concurrent calls reach the log in any order: whichever of the two came first
        # stored the key, the other was told it is a duplicate of the same sequence.
        assert sorted([answers[0].duplicates[0], answers[-1].duplicates[0]]) == [False, True]
        assert answers[-1].sequences == answers[0].sequences[:1]
        assert not any(answers[0].duplicates[1:])
        read = await read_all(b.stream)
        by_sequence = {e.sequence: e.key for e in read}
        for c, answer in enumerate(answers[:-1]):
            keys = [by_sequence[s] for s in answer.sequences]
            assert keys == [f"c{c}-{j}" for j in range(len(calls[c]))]
        assert len(read) == sum(len(events) for events in calls[:-1])
        assert [e.sequence for e in read] == sorted(by_sequence)
