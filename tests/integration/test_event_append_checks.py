"""AppendEvents checks every event of a batch (a cheap test per event, events.check's
message when one fails): each fault is INVALID_ARGUMENT naming the event, and nothing
of the batch is stored."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc import aio

from services.common.gen.liveml.events.v1 import events_pb2 as epb
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc
from tests.helpers.events import backend, read_all
from tests.helpers.registry import auth


def good(key: str) -> epb.Event:
    return epb.Event(
        kind=epb.EVENT_KIND_FEEDBACK,
        model="m",
        key=key,
        feedback=epb.Feedback(request_id=key),
    )


def bad(change: str) -> epb.Event:
    event = good("bad")
    if change == "kind":
        event.kind = epb.EVENT_KIND_UNSPECIFIED
    elif change == "kind unknown":
        event.kind = 99  # type: ignore[assignment]
    elif change == "no model":
        event.model = ""
    elif change == "model":
        event.model = "no spaces"
    elif change == "no key":
        event.key = ""
    elif change == "long key":
        event.key = "k" * 257
    elif change == "sequence":
        event.sequence = 7
    elif change == "body":
        event.prediction.request_id = "r"  # the oneof: now a prediction body
    elif change == "no body":
        event.ClearField("feedback")
    return event


KIND = "events[1]: kind must be EVENT_KIND_PREDICTION, EVENT_KIND_FEEDBACK or EVENT_KIND_EXAMPLE"
CASES = {
    "kind": KIND,
    "kind unknown": KIND,
    "no model": "events[1]: model is required (the model's short name)",
    "model": "model id 'no spaces' is not valid: use 1-128 letters, digits, '_', '.', '-', "
    "starting with a letter or digit",
    "no key": "events[1]: key is required, at most 256 characters",
    "long key": "events[1]: key is required, at most 256 characters",
    "sequence": "events[1]: sequence is assigned by the stream; leave it 0",
    "body": "events[1]: a feedback event carries a feedback body, not prediction",
    "no body": "events[1]: a feedback event carries a feedback body, not none",
}


@pytest.mark.parametrize("change", list(CASES))
async def test_a_bad_event_fails_its_batch_with_its_reason(change: str, tmp_path: Path) -> None:
    async with backend("sqlite", tmp_path) as b:
        assert b.registry is not None
        stub = rpb_grpc.RegistryServiceStub(b.registry.channel)  # type: ignore[no-untyped-call]
        request = rpb.AppendEventsRequest(events=[good("a"), bad(change), good("c")])
        with pytest.raises(aio.AioRpcError) as failed:
            await stub.AppendEvents(request, metadata=auth(b.registry.admin_token))
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert failed.value.details() == CASES[change]
        assert await read_all(b.stream) == []
        fine = rpb.AppendEventsRequest(events=[good("a"), good("c")])
        answer = await stub.AppendEvents(fine, metadata=auth(b.registry.admin_token))
        assert list(answer.sequences) == [1, 2]
        assert [e.feedback.request_id for e in await read_all(b.stream)] == ["a", "c"]
