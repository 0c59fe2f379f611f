"""`liveml data push|tail|stats` against a real registry process: files stored whole or
not at all, duplicates counted, each bad file a clear message and exit 1 with nothing
stored; the stream followed and its numbers shown."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.common.gen.liveml.events.v1 import events_pb2 as epb
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc
from tests.helpers.models import int_bool, linear
from tests.helpers.procs import ROOT, Proc, python_module, registry_process
from tests.helpers.registry import auth, upload
from tests.helpers.wait import wait_until

LIN_HEADER = "x[0],x[1],x[2],x[3],label"


@dataclass
class Registry:
    env: dict[str, str]
    stub: rpb_grpc.RegistryServiceStub
    md: tuple[tuple[str, str], ...]
    root: Path
    models: int = 0

    def model(self, kind: str = "lin") -> str:
        """A new model with a version (so a signature): `lin` x FP32[-1,4]; `ints` x
        INT64[-1,3] and mask BOOL[-1,3]."""
        self.models += 1
        name = f"{kind}{self.models}"
        self.stub.CreateModel(rpb.CreateModelRequest(model_id=name), metadata=self.md)
        path = self.root / f"{name}.onnx"
        (linear if kind == "lin" else int_bool)(path)
        self.stub.CreateVersion(iter(upload(f"models/{name}", path.read_bytes())), metadata=self.md)
        return name

    def examples(self, model: str) -> list[epb.Event]:
        request = rpb.ReadEventsRequest(model=model, start=rpb.ReadEventsRequest.START_OLDEST)
        return [
            e for reply in self.stub.ReadEvents(request, metadata=self.md) for e in reply.events
        ]

    def counts(self, model: str) -> dict[int, int]:
        stats = self.stub.GetEventStats(
            rpb.GetEventStatsRequest(model=f"models/{model}"), metadata=self.md
        )
        return {c.kind: c.count for c in stats.counts}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    root = tmp_path_factory.mktemp("data-cli")
    proc, port = registry_process(root)
    token = (root / "admin.token").read_text().strip()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    env = {"LIVEML_REGISTRY": f"127.0.0.1:{port}", "LIVEML_TOKEN": token, "COLUMNS": "200"}
    yield Registry(env, rpb_grpc.RegistryServiceStub(channel), auth(token), root)
    channel.close()
    assert proc.stop() == 0


def liveml(
    env: dict[str, str], *args: str, ok: bool = True, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("LIVEML_")},
            **env,
            **(extra or {}),
        },
    )
    if ok:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_good_csv_is_stored_once_with_lines_labels_and_groups(
    registry: Registry, tmp_path: Path
) -> None:
    model = registry.model()
    rows = [f"{i},{i + 0.5},-{i},1e-3,{i % 3},{'eu' if i % 2 else 'us'}" for i in range(5)]
    csv = write(tmp_path / "good.csv", f"{LIN_HEADER},region\n" + "\n".join(rows) + "\n")

    first = liveml(registry.env, "data", "push", str(csv), "--model", model, "--group", "region")
    assert f"stored 5 of 5 examples from good.csv for {model}" in first.stdout
    assert registry.counts(model) == {epb.EVENT_KIND_EXAMPLE: 5}
    events = registry.examples(model)
    assert [e.example.line for e in events] == [2, 3, 4, 5, 6]  # the header is line 1
    third = events[2].example
    assert list(third.features) == [2.0, 2.5, -2.0, 1e-3]
    assert third.label.class_index == 2 and third.label.WhichOneof("value") == "class_index"
    assert (third.source, third.group, third.origin) == (
        "good.csv",
        "us",
        epb.EXAMPLE_ORIGIN_IMPORTED,
    )

    again = liveml(
        registry.env, "data", "push", str(csv), "-m", model, "--group", "region", "--json"
    )
    reply = json.loads(again.stdout)
    assert reply["received"] == 5 and reply["duplicates"] == 5 and "stored" not in reply
    assert registry.counts(model) == {epb.EVENT_KIND_EXAMPLE: 5}


def test_a_good_parquet_file_with_a_list_column_and_keys(
    registry: Registry, tmp_path: Path
) -> None:
    model = registry.model()
    table = pa.table(
        {
            "id": ["a", "b", "c", "a"],  # `a` twice: stored once
            "x": pa.array([[1, 2, 3, 4], [5, 6, 7, 8], [0, 0, 0, 0], [1, 2, 3, 4]]),
            "price": pa.array([1.5, 2.0, -3.25, 1.5]),
        }
    )
    path = tmp_path / "good.parquet"
    pq.write_table(table, path)
    pushed = liveml(
        registry.env, "data", "push", str(path), "-m", model, "--label", "price", "--key", "id"
    )
    assert "stored 3 of 4 examples" in pushed.stdout and "1 already stored" in pushed.stdout
    events = registry.examples(model)
    assert [list(e.example.features) for e in events] == [[1, 2, 3, 4], [5, 6, 7, 8], [0, 0, 0, 0]]
    assert [e.example.label.number for e in events] == [1.5, 2.0, -3.25]
    assert [e.example.line for e in events] == [1, 2, 3]
    assert [e.key for e in events] == [f"import:{model}:{k}" for k in "abc"]
    assert liveml(registry.env, "data", "push", str(path), "-m", model, "--key", "id",
                  "--label", "price").stdout.startswith("stored 0 of 4")  # fmt: skip
    assert registry.counts(model) == {epb.EVENT_KIND_EXAMPLE: 3}


def _bad_type_parquet(path: Path) -> Path:
    table = pa.table({f"x[{j}]": [1.0, 2.0, 3.0] for j in range(4)} | {"label": [0, 1, 2]})
    table = table.set_column(2, "x[2]", pa.array(["1", "2", "two"]))
    pq.write_table(table, path)
    return path


BAD = {
    "missing column": (
        "lin",
        "x[0],x[1],x[2],label\n1,2,3,0\n",
        "bad.csv: missing feature column(s) 'x[3]' (the model's features are x[0], x[1], x[2], "
        "x[3]; the label column is 'label')",
    ),
    "extra column": (
        "lin",
        f"{LIN_HEADER},note\n1,2,3,4,0,hi\n",
        "bad.csv: extra column(s) 'note': not an input feature of the model, nor named by "
        "--label / --key / --group",
    ),
    "wrong type": (
        "lin",
        f"{LIN_HEADER}\n1,2,3,4,0\n1,2,3,4,1\n1,2,abc,4,0\n",
        "bad.csv line 4: column 'x[2]' is 'abc', not a number (the model's input is FP32)",
    ),
    "not a whole number": (
        "ints",
        "x[0],x[1],x[2],mask[0],mask[1],mask[2],label\n1,2,3,true,false,1,0\n1,2.5,3,0,0,0,1\n",
        "bad.csv line 3: column 'x[1]' is '2.5', not a whole number (the model's input is INT64)",
    ),
    "NaN where the signature forbids it": (
        "ints",
        "x[0],x[1],x[2],mask[0],mask[1],mask[2],label\n1,2,3,1,0,1,0\n1,,3,0,0,0,1\n",
        "bad.csv line 3: column 'x[1]' is empty or NaN, but the model's input is INT64, which "
        "has no NaN",
    ),
    "empty label": (
        "lin",
        f"{LIN_HEADER}\n1,2,3,4,0\n1,2,3,4,\n",
        "bad.csv line 3: the label column 'label' is empty",
    ),
    "empty file": ("lin", "", "bad.csv is empty: no rows to push"),
    "header only": ("lin", f"{LIN_HEADER}\n", "bad.csv has a header but no rows: nothing to push"),
    "a row of another width": (
        "lin",
        f"{LIN_HEADER}\n1,2,3,4,0\n1,2,3,0\n",
        "bad.csv line 3: 4 fields, the header has 5",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_csv_is_refused_whole_with_the_line(
    registry: Registry, tmp_path: Path, case: str
) -> None:
    kind, text, message = BAD[case]
    model = registry.model(kind)
    done = liveml(
        registry.env, "data", "push", str(write(tmp_path / "bad.csv", text)), "-m", model, ok=False
    )
    assert done.returncode == 1, done.stdout
    assert message in " ".join(done.stderr.split()), done.stderr
    assert "nothing was stored" in done.stderr
    assert registry.counts(model) == {}


def test_bad_parquet_type_names_the_row(registry: Registry, tmp_path: Path) -> None:
    model = registry.model()
    path = _bad_type_parquet(tmp_path / "bad.parquet")
    done = liveml(registry.env, "data", "push", str(path), "-m", model, ok=False)
    assert done.returncode == 1
    assert "bad.parquet row 3: column 'x[2]' is 'two', not a number" in done.stderr
    assert registry.counts(model) == {}


def test_unknown_model_and_size_limit(registry: Registry, tmp_path: Path) -> None:
    csv = write(tmp_path / "rows.csv", f"{LIN_HEADER}\n" + "1,2,3,4,0\n" * 20)
    unknown = liveml(registry.env, "data", "push", str(csv), "-m", "nope", ok=False)
    assert unknown.returncode == 1 and "error: NOT_FOUND: model 'nope' not found" in unknown.stderr

    model = registry.model()
    size = csv.stat().st_size
    big = liveml(registry.env, "data", "push", str(csv), "-m", model, "--max-bytes", "64", ok=False)
    assert big.returncode == 1
    assert f"rows.csv is {size} bytes, over the limit of 64 (--max-bytes)" in big.stderr
    by_env = liveml(
        registry.env, "data", "push", str(csv), "-m", model, ok=False,
        extra={"LIVEML_DATA_MAX_BYTES": "64"},
    )  # fmt: skip
    assert by_env.returncode == 1 and "over the limit of 64" in by_env.stderr
    assert registry.counts(model) == {}


def test_parquet_without_pyarrow_says_what_to_install(registry: Registry, tmp_path: Path) -> None:
    model = registry.model()
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"label": [1]}), path)
    blocked = tmp_path / "blocked" / "pyarrow"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('pyarrow is not installed')\n")
    done = liveml(
        registry.env, "data", "push", str(path), "-m", model, ok=False,
        extra={"PYTHONPATH": str(blocked.parent)},
    )  # fmt: skip
    assert done.returncode == 1
    assert "reading Parquet needs pyarrow: pip install 'liveml[parquet]'" in done.stderr


def test_the_registry_check_is_the_one_that_counts(registry: Registry, tmp_path: Path) -> None:
    """A client that skips the checks (another tool) still stores nothing of a bad file."""
    model = registry.model("ints")
    digest = hashlib.sha256(b"file").hexdigest()
    header = rpb.ImportExamplesRequest.Header(
        model=f"models/{model}",
        features=["x[0]", "x[1]", "x[2]", "mask[0]", "mask[1]", "mask[2]"],
        source="f.csv",
        digest=digest,
        examples=2,
    )
    good = rpb.ImportExamplesRequest.Rows(lines=[2])
    good.examples.add(features=[1, 2, 3, 1, 0, 1]).label.class_index = 1
    bad = rpb.ImportExamplesRequest.Rows(lines=[3])
    bad.examples.add(features=[1, float("nan"), 3, 1, 0, 1]).label.class_index = 0
    messages = [
        rpb.ImportExamplesRequest(header=header),
        rpb.ImportExamplesRequest(rows=good),
        rpb.ImportExamplesRequest(rows=bad),
    ]
    with pytest.raises(grpc.RpcError) as caught:
        registry.stub.ImportExamples(iter(messages), metadata=registry.md)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == (
        "line 3: feature 'x[1]' is NaN, but the model's input is INT64, which has no NaN"
    )
    assert registry.counts(model) == {}


# --- tail and stats ------------------------------------------------------------------


def test_tail_prints_the_stream_and_follows_it(registry: Registry, tmp_path: Path) -> None:
    model = registry.model()
    first = write(tmp_path / "first.csv", f"{LIN_HEADER}\n1,2,3,4,0\n5,6,7,8,1\n")
    liveml(registry.env, "data", "push", str(first), "-m", model)

    text = liveml(registry.env, "data", "tail", model, "--no-follow").stdout.splitlines()
    assert len(text) == 2
    assert f"example {model} imported first.csv:2 features=[1, 2, 3, 4] label=class 0" in text[0]
    as_json = liveml(registry.env, "data", "tail", model, "--no-follow", "--json").stdout
    events = [json.loads(line) for line in as_json.splitlines()]
    assert [e["example"]["line"] for e in events] == [2, 3]
    second_seq = int(events[1]["sequence"])
    later = liveml(registry.env, "data", "tail", model, "--no-follow", "--from", str(second_seq))
    assert later.stdout.splitlines() == text[1:]
    none = liveml(registry.env, "data", "tail", model, "--no-follow", "--kind", "feedback")
    assert none.stdout == ""

    follower: Proc = python_module(
        "services.cli.main",
        {**registry.env, "PYTHONUNBUFFERED": "1"},
        "data", "tail", model, "--json", "--from", "oldest",
    )  # fmt: skip
    try:
        follower.expect('"line":3')
        second = write(tmp_path / "second.csv", f"{LIN_HEADER}\n9,9,9,9,2\n")
        liveml(registry.env, "data", "push", str(second), "-m", model)
        got = json.loads(follower.expect('"source":"second.csv"'))
        assert got["example"]["features"] == [9.0, 9.0, 9.0, 9.0]
        assert follower.popen.poll() is None  # still following
    finally:
        follower.stop()


def test_tail_and_stats_errors(registry: Registry) -> None:
    for args in (("tail", "nope", "--no-follow"), ("stats", "nope")):
        done = liveml(registry.env, "data", *args, ok=False)
        assert done.returncode == 1
        assert "error: NOT_FOUND: model 'nope' not found" in done.stderr
    model = registry.model()
    kind = liveml(registry.env, "data", "tail", model, "--kind", "label", ok=False)
    assert kind.returncode == 2 and "expected one of prediction, feedback, example" in kind.stderr
    start = liveml(registry.env, "data", "tail", model, "--from", "first", ok=False)
    assert (
        start.returncode == 2
        and "expected a sequence (1 or more), oldest or latest" in start.stderr
    )


def test_stats_shows_counts_joins_lag_and_retention(registry: Registry, tmp_path: Path) -> None:
    model = registry.model()
    csv = write(
        tmp_path / "rows.csv", f"{LIN_HEADER}\n" + "".join(f"{i},0,0,0,1\n" for i in range(7))
    )
    liveml(registry.env, "data", "push", str(csv), "-m", model)
    stats = json.loads(liveml(registry.env, "data", "stats", model, "--json").stdout)
    assert stats["backend"] == "sql"
    assert stats["counts"] == [{"kind": "EXAMPLE", "count": 7}]
    assert stats["retention_age"] == "604800s"
    joiner = next(c for c in stats["consumers"] if c["name"] == "joiner")

    def caught_up() -> bool:
        again = json.loads(liveml(registry.env, "data", "stats", model, "--json").stdout)
        lag = next(c for c in again["consumers"] if c["name"] == "joiner")
        return lag.get("pending", 0) == 0

    assert "position" in joiner or "pending" in joiner
    wait_until(caught_up, 30, "the joiner to read past the import")
    shown = " ".join(liveml(registry.env, "data", "stats", model).stdout.split())
    for fragment in (
        f"model │ {model}",
        "backend │ sql",
        "example │ 7",
        "prediction │ 0",
        "joined fraction │ 0.0%",
        "retention │ 7d or 1073741824 bytes, oldest first",
        "joiner │",
    ):
        assert fragment in shown, shown


def test_push_needs_an_ingest_token_not_a_viewer_one(registry: Registry, tmp_path: Path) -> None:
    model = registry.model()
    csv = write(tmp_path / "rows.csv", f"{LIN_HEADER}\n1,2,3,4,0\n")
    tokens = {}
    for role in (rpb.ROLE_INGEST, rpb.ROLE_VIEWER):
        made = registry.stub.CreateToken(
            rpb.CreateTokenRequest(display_name="data", role=role), metadata=registry.md
        )
        tokens[role] = made.secret
    viewer = liveml(
        {**registry.env, "LIVEML_TOKEN": tokens[rpb.ROLE_VIEWER]},
        "data", "push", str(csv), "-m", model, ok=False,
    )  # fmt: skip
    assert viewer.returncode == 1 and "error: PERMISSION_DENIED" in viewer.stderr
    assert registry.counts(model) == {}
    ingest = liveml(
        {**registry.env, "LIVEML_TOKEN": tokens[rpb.ROLE_INGEST]},
        "data",
        "push",
        str(csv),
        "-m",
        model,
    )
    assert "stored 1 of 1" in ingest.stdout
    assert registry.counts(model) == {epb.EVENT_KIND_EXAMPLE: 1}


def test_a_file_failing_while_it_is_sent_stores_nothing(registry: Registry) -> None:
    """The file read again to send it fails (it changed since it was checked): the
    stream ends in an error, which cancels the call, and the registry keeps nothing."""
    from services.cli.data_cmds import _requests
    from services.cli.data_files import FileError, Row
    from services.common.gen.liveml.gateway.v1 import gateway_pb2 as gpb

    model = registry.model()

    def changed() -> Iterator[Row]:
        for line in range(2, 12):
            yield Row(line, [1.0, 2.0, 3.0, 4.0], gpb.Label(class_index=1), "", "")
        raise FileError("rows.csv line 12: column 'x[0]' is 'abc', not a number")

    header = rpb.ImportExamplesRequest.Header(
        model=f"models/{model}",
        features=["x[0]", "x[1]", "x[2]", "x[3]"],
        source="rows.csv",
        digest=hashlib.sha256(b"rows").hexdigest(),
        examples=20,
    )
    failed: list[FileError] = []
    sent: list[int] = []
    with pytest.raises(grpc.RpcError):
        registry.stub.ImportExamples(
            _requests(header, changed(), 3, False, sent.append, failed), metadata=registry.md
        )
    assert [str(e) for e in failed] == ["rows.csv line 12: column 'x[0]' is 'abc', not a number"]
    assert sum(sent) == 9  # three messages of three rows went out before it failed
    assert registry.counts(model) == {}
