"""The CLI's JSON: proto3's mapping with int64s as numbers and enums by short names."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from services.cli.output import as_dict, short, size_text
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb


def test_int64_fields_maps_and_lists_are_numbers_and_enums_short() -> None:
    worker = rpb.Worker(
        name="workers/w1",
        versions=[
            rpb.WorkerVersionState(
                model="iris",
                version=3,
                state=rpb.VERSION_LOAD_STATE_READY,
                update_time=Timestamp(seconds=1),
            )
        ],
    )
    assert as_dict(worker)["versions"] == [
        {"model": "iris", "version": 3, "state": "READY", "update_time": "1970-01-01T00:00:01Z"}
    ]
    model = rpb.Model(name="models/iris", aliases={"prod": 2}, latest_version=2)
    shown = as_dict(model)
    assert shown["aliases"] == {"prod": 2} and shown["latest_version"] == 2
    rollout = rpb.Rollout(
        pinned=[4, 5], status=rpb.AnalysisStatus(phase=rpb.AnalysisStatus.PHASE_PAUSED)
    )
    assert as_dict(rollout) == {"pinned": [4, 5], "status": {"phase": "PAUSED"}}


def test_an_enum_value_this_cli_does_not_know_stays_a_number() -> None:
    state = rpb.WorkerVersionState()
    state.state = 99  # type: ignore[assignment]  # a registry newer than this CLI
    assert as_dict(state) == {"state": 99}
    assert short(rpb.VersionLoadState, 99) == "99"
    assert short(rpb.VersionLoadState, rpb.VERSION_LOAD_STATE_READY) == "ready"


def test_a_size_is_said_once_when_its_short_form_is_exact() -> None:
    assert size_text(844) == "844 bytes"  # not "844 bytes (844 bytes)"
    assert size_text(1) == "1 byte"
    assert size_text(1_234_567) == "1.2 MB (1234567 bytes)"
