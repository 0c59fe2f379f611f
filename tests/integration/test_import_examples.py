"""The registry's ImportExamples on its own (any client, not only `liveml data push`):
each misuse a clear status and message, and nothing stored; the size limit; roles."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from services.common.gen.liveml.gateway.v1 import gateway_pb2 as gpb
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from tests.helpers.models import identity_all, linear
from tests.helpers.registry import (
    Client,
    RunningRegistry,
    registry_settings,
    running_registry,
    stream,
    upload,
)

FEATURES = ["x[0]", "x[1]", "x[2]", "x[3]"]
DIGEST = hashlib.sha256(b"a file").hexdigest()
Header = rpb.ImportExamplesRequest.Header
Rows = rpb.ImportExamplesRequest.Rows


def header(model: str = "models/lin", features: list[str] = FEATURES, **kw: Any) -> Any:
    """A header; `examples` is filled in by `announced` unless given."""
    return rpb.ImportExamplesRequest(
        header=Header(model=model, features=features, source="f.csv", digest=DIGEST, **kw)
    )


def announced(messages: list[Any]) -> list[Any]:
    """The messages, with a header that has no `examples` announcing all the rows sent."""
    if messages and messages[0].WhichOneof("part") == "header" and not messages[0].header.examples:
        total = sum(len(m.rows.examples) for m in messages if m.WhichOneof("part") == "rows")
        first = rpb.ImportExamplesRequest()
        first.CopyFrom(messages[0])
        first.header.examples = total
        messages = [first, *messages[1:]]
    return messages


def rows(*features: list[float], start: int = 2, label: bool = True, **kw: Any) -> Any:
    message = Rows(lines=list(range(start, start + len(features))), **kw)
    for i, values in enumerate(features):
        example = message.examples.add(features=values)
        if label:
            example.label.class_index = i % 3
    return rpb.ImportExamplesRequest(rows=message)


async def model(client: Client, name: str, path: Path | None) -> None:
    await client.CreateModel(rpb.CreateModelRequest(model_id=name))
    if path is not None:
        await client.CreateVersion(stream(upload(f"models/{name}", path.read_bytes())))


async def stored(client: Client, name: str) -> int:
    stats = await client.GetEventStats(rpb.GetEventStatsRequest(model=f"models/{name}"))
    return sum(c.count for c in stats.counts)


async def refused(client: Client, messages: list[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.ImportExamples(stream(messages))
    return caught.value


@pytest.fixture
async def client(registry: RunningRegistry, tmp_path: Path) -> AsyncIterator[Client]:
    c = registry.client()
    await model(c, "lin", linear(tmp_path / "lin.onnx"))
    await model(c, "texts", identity_all(tmp_path / "all.onnx"))
    await model(c, "empty", None)
    yield c


ONE = [1.0, 2.0, 3.0, 4.0]
LONG_KEY = "k" * 300
MISUSE: dict[str, tuple[list[Any], grpc.StatusCode, str]] = {
    "no messages": (
        [],
        grpc.StatusCode.INVALID_ARGUMENT,
        "the first ImportExamples message must carry the header",
    ),
    "rows first": (
        [rows(ONE)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "the first ImportExamples message must carry the header",
    ),
    "a bare model id": (
        [header("lin"), rows(ONE)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "expected a model name like 'models/iris', got 'lin'",
    ),
    "an unknown model": (
        [header("models/nope"), rows(ONE)],
        grpc.StatusCode.NOT_FOUND,
        "model 'nope' not found",
    ),
    "a model without a signature": (
        [header("models/empty"), rows(ONE)],
        grpc.StatusCode.FAILED_PRECONDITION,
        "model 'empty' has no input signature yet: push a version first",
    ),
    "a model with inputs of no fixed width": (
        [header("models/texts"), rows(ONE)],
        grpc.StatusCode.FAILED_PRECONDITION,
        "model 'texts' input 'fp32' has a variable width [-1, -1]: examples need a fixed "
        "number of features",
    ),
    "no digest": (
        [
            rpb.ImportExamplesRequest(header=Header(model="models/lin", features=FEATURES)),
            rows(ONE),
        ],
        grpc.StatusCode.INVALID_ARGUMENT,
        "header.digest must be the file's sha256 (64 hex digits)",
    ),
    "features missing and extra": (
        [header(features=["x[0]", "x[1]", "x[2]", "y"]), rows(ONE)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "features must be model 'lin''s inputs x[0], x[1], x[2], x[3] in that order: missing "
        "x[3]; not inputs of the model: y",
    ),
    "features in another order": (
        [header(features=["x[1]", "x[0]", "x[2]", "x[3]"]), rows(ONE)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "features must be model 'lin''s inputs x[0], x[1], x[2], x[3] in that order: in "
        "another order",
    ),
    "a second header": (
        [header(), rows(ONE), header()],
        grpc.StatusCode.INVALID_ARGUMENT,
        "only the first ImportExamples message may carry a header",
    ),
    "lines that do not match": (
        [header(), rpb.ImportExamplesRequest(rows=Rows(examples=[gpb.Example(features=ONE)]))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "rows need one line number per example",
    ),
    "groups that do not match": (
        [header(), rows(ONE, ONE, groups=["eu"])],
        grpc.StatusCode.INVALID_ARGUMENT,
        "rows need one group per example, or none",
    ),
    "no examples announced": (
        [header(examples=-1), rows(ONE)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "header.examples must be the number of examples the stream carries (1 or more)",
    ),
    "no rows": (
        [header(examples=1)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "the stream ended after 1 of the 2 examples its header announced: nothing was stored",
    ),
    "fewer rows than announced": (
        [header(examples=5), rows(ONE, ONE)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "the stream ended after 3 of the 6 examples its header announced: nothing was stored",
    ),
    "more rows than announced": (
        [header(examples=1), rows(ONE, ONE)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "more examples than the header announced (2): nothing was stored",
    ),
    "a row of another width": (
        [header(), rows(ONE, [1.0, 2.0])],
        grpc.StatusCode.INVALID_ARGUMENT,
        "line 3: 2 features, the model takes 4",
    ),
    "a row without a label": (
        [header(), rows(ONE, label=False)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "line 2: no label (a class_index, a number or a text)",
    ),
    "a key too long": (
        [
            header(),
            rpb.ImportExamplesRequest(
                rows=Rows(
                    lines=[2],
                    examples=[gpb.Example(features=ONE, key=LONG_KEY, label=gpb.Label(number=1))],
                )
            ),
        ],
        grpc.StatusCode.INVALID_ARGUMENT,
        "line 2: the key is longer than 245 characters",
    ),
    "a group too long": (
        [header(), rows(ONE, groups=["g" * 201])],
        grpc.StatusCode.INVALID_ARGUMENT,
        "line 2: the group is longer than 200 characters",
    ),
}


@pytest.mark.parametrize("case", list(MISUSE))
async def test_misuse_is_refused_and_stores_nothing(client: Client, case: str) -> None:
    messages, code, message = MISUSE[case]
    # A good row first: a refusal later in the stream must not keep it (a header given
    # its own count counts it too).
    if messages and messages[0].WhichOneof("part") == "header":
        first = rpb.ImportExamplesRequest()
        first.CopyFrom(messages[0])
        if first.header.examples > 0:
            first.header.examples += 1
        messages = [first, rows(ONE, start=100), *messages[1:]]
    error = await refused(client, announced(messages))
    assert (error.code(), error.details()) == (code, message)
    for name in ("lin", "texts", "empty"):
        assert await stored(client, name) == 0


async def test_roles(registry: RunningRegistry, client: Client) -> None:
    messages = announced([header(), rows(ONE, ONE)])
    viewer = registry.client(await registry.token(rpb.ROLE_VIEWER))
    error = await refused(viewer, messages)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "ImportExamples" in (error.details() or "")
    assert await stored(client, "lin") == 0
    ingest = registry.client(await registry.token(rpb.ROLE_INGEST))
    await ingest.GetModel(rpb.GetModelRequest(name="models/lin"))  # data push reads the signature
    reply = await ingest.ImportExamples(stream(messages))
    assert (reply.received, reply.stored, reply.duplicates) == (2, 2, 0)
    again = await ingest.ImportExamples(stream(messages))
    assert (again.received, again.stored, again.duplicates) == (2, 0, 2)
    assert await stored(client, "lin") == 2


async def test_over_the_size_limit_stores_nothing(tmp_path: Path) -> None:
    settings = registry_settings(
        f"sqlite+aiosqlite:///{tmp_path}/r.db", tmp_path, import_max_bytes=2048
    )
    async with running_registry(settings) as registry:
        c = registry.client()
        await model(c, "lin", linear(tmp_path / "lin.onnx"))
        error = await refused(
            c, announced([header(), *(rows(ONE, start=2 + i) for i in range(200))])
        )
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.details() == (
            "the import is over the registry's limit of 2048 bytes (--import-max-bytes); "
            "split the file"
        )
        assert await stored(c, "lin") == 0
