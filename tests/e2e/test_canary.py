"""Automatic canary analysis end to end: registry, two workers and a gateway as processes,
real traffic with feedback, step intervals shortened by configuration."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc import aio

from services.common import drift
from services.common.gen.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc
from tests.helpers import models
from tests.helpers.cluster import Cluster, cluster, infer_request
from tests.helpers.procs import registry_process
from tests.helpers.registry import database
from tests.helpers.traffic import Traffic
from tests.helpers.wait import async_wait_until
from tests.integration.test_cli import liveml

pytestmark = pytest.mark.timeout(180)

FAST = {
    "LIVEML_CONTROLLER_SECONDS": "0.2",
    "LIVEML_MONITOR_SECONDS": "0.5",
    "LIVEML_MONITOR_WINDOW_SECONDS": "4",
    "LIVEML_LEADER_LEASE_SECONDS": "2",
}
DATA_PLANE = ("--report-seconds", "0.3")
Phase = rpb.AnalysisStatus


def seconds(value: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(value * 1e9))
    return d


def policy(candidate: int, **overrides: Any) -> rpb.AnalysisPolicy:
    fields: dict[str, Any] = {
        "steps": [20, 50, 100],
        # Long enough that a 20% step sees min_requests answers from two clients whose
        # every call waits for its durable feedback (~30-40 ms each on a busy box).
        "step_interval": seconds(4),
        "min_requests": 30,
        "max_error_rate_delta": 0.05,
        "max_p99_latency_ratio": 1.8,
        "max_accuracy_drop": 0.1,
        "ready_timeout": seconds(20),
        "max_idle_intervals": 3,
        "candidate_version": candidate,
    }
    fields.update(overrides)
    return rpb.AnalysisPolicy(**fields)


@asynccontextmanager
async def serving(root: Path, **registry_env: str) -> AsyncIterator[tuple[Cluster, str]]:
    """A cluster serving v1 (a correct classifier) of `clf` on two workers and a gateway."""
    async with cluster(root, **{**FAST, **registry_env}) as c:
        await c.create_model("clf")
        await c.push("clf", models.classifier(root / "v1.onnx"))
        await c.route("clf", (1, 100))
        c.start_worker("w1", *DATA_PLANE)
        c.start_worker("w2", *DATA_PLANE)
        await c.wait_state("w1", "clf", 1, "READY")
        await c.wait_state("w2", "clf", 1, "READY")
        port = c.start_gateway(*DATA_PLANE)
        yield c, f"127.0.0.1:{port}"


async def start_canary(c: Cluster, candidate: int, **overrides: Any) -> rpb.Rollout:
    request = rpb.UpdateRolloutRequest(
        rollout=rpb.Rollout(
            name="models/clf/rollout",
            targets=[
                rpb.TrafficTarget(version=1, percent=80),
                rpb.TrafficTarget(version=candidate, percent=20),
            ],
            analysis=policy(candidate, **overrides),
        )
    )
    return (await c.stub.UpdateRollout(request, metadata=c.md)).rollout  # type: ignore[no-any-return]


async def rollout(c: Cluster) -> rpb.Rollout:
    reply = await c.stub.GetRollout(rpb.GetRolloutRequest(name="models/clf/rollout"), metadata=c.md)
    return reply.rollout  # type: ignore[no-any-return]


async def wait_phase(c: Cluster, phase: int, within: float = 60) -> rpb.Rollout:
    seen: list[rpb.Rollout] = []

    async def reached() -> rpb.Rollout | None:
        current = await rollout(c)
        seen[:] = [current]
        return current if current.status.phase == phase else None

    try:
        return await async_wait_until(reached, within, f"phase {Phase.Phase.Name(phase)}")
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; last status: {seen[-1].status if seen else None}") from None


async def audit(c: Cluster, action: str) -> list[dict[str, Any]]:
    reply = await c.stub.ListAuditEvents(
        rpb.ListAuditEventsRequest(target="models/clf/rollout", page_size=200), metadata=c.md
    )
    return [json.loads(e.details) | {"actor": e.actor} for e in reply.events if e.action == action]


async def alerts(c: Cluster, kind: str, firing_only: bool = False) -> list[rpb.Alert]:
    reply = await c.stub.ListAlerts(
        rpb.ListAlertsRequest(model="clf", firing_only=firing_only), metadata=c.md
    )
    return [a for a in reply.alerts if a.alert == kind]


EVERY_CHECK = {
    "max_error_rate_delta",
    "max_p99_latency_ratio",
    "max_accuracy_drop",
    "max_drift_psi",
}


def assert_every_check_named(decision: dict[str, Any], text: str) -> None:
    """A decision lists every check, with its number or "no data" (none left out)."""
    assert {check["check"] for check in decision["checks"]} >= EVERY_CHECK
    for check in decision["checks"]:
        assert (check["value"] is None) == (check["ok"] is None) == ("no_data" in check)
    for label in ("error rate", "accuracy", "drift PSI"):
        assert label in text, (label, text)
    assert re.search(r"\bp[\d.]+ [\d.]+ ms vs [\d.]+ ms|tail latency: no data", text), text


class Misbehaving:
    """A client whose every request is its own mistake (FP64 where the model takes FP32)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.codes: list[str] = []
        self._stop = False
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async with aio.insecure_channel(self.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while not self._stop:
                request = infer_request("clf", np.ones((1, 4), np.float64))
                try:
                    await stub.ModelInfer(request, timeout=10)
                    self.codes.append("OK")
                except aio.AioRpcError as exc:
                    self.codes.append(exc.code().name)
                    assert "FP32" in (exc.details() or ""), exc.details()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop = True
        assert self._task is not None
        await self._task


async def test_good_candidate_is_promoted_through_every_step(tmp_path: Path) -> None:
    async with serving(tmp_path) as (c, address):
        await c.push("clf", models.classifier(tmp_path / "v2.onnx"))
        traffic = Traffic(address, "clf", clients=4)
        traffic.start()
        # Its mistakes land on both versions and must count for neither's error rate.
        rude = Misbehaving(address)
        rude.start()
        # The same model on both sides: its p99 over a step's few dozen requests is
        # their slowest one, which one scheduling hiccup on a shared box doubles. A
        # tolerant ratio keeps the check in the decision without making it a coin toss
        # (the slow candidate below, whose runs take milliseconds instead of tens of
        # microseconds, is held to the default 1.8).
        started = await start_canary(c, 2, max_p99_latency_ratio=5.0)
        assert started.status.phase == Phase.PHASE_PROGRESSING
        done = await wait_phase(c, Phase.PHASE_PROMOTED)
        await traffic.stop()
        await rude.stop()

        assert [(t.version, t.percent) for t in done.targets] == [(2, 100)]
        steps = await audit(c, "CanaryStep")
        assert [(s["from_percent"], s["to_percent"]) for s in steps[::-1]] == [(20, 50)]
        promoted = await audit(c, "CanaryPromote")
        assert len(promoted) == 1 and promoted[0]["actor"] == "controller"
        assert set(rude.codes) == {"INVALID_ARGUMENT"}
        for decision in (*steps, *promoted):
            assert decision["candidate"]["requests"] >= 30 and decision["stable"]["requests"] >= 30
            assert_every_check_named(decision, done.status.last_decision)
            judged = {check["check"]: check for check in decision["checks"]}
            for name in ("max_error_rate_delta", "max_p99_latency_ratio", "max_accuracy_drop"):
                assert judged[name]["ok"] is True, judged[name]
            # Drift (reference adopted from the first window) was not asked for: judged
            # when it has numbers, never required.
            assert judged["max_drift_psi"]["ok"] in (True, None)
            assert not judged["max_drift_psi"]["required"]
            for side in ("stable", "candidate"):
                assert decision[side]["errors"] == 0 and decision[side]["error_rate"] == 0
        env = {"LIVEML_REGISTRY": f"127.0.0.1:{c.registry_port}", "LIVEML_TOKEN": c.admin}
        status = await asyncio.to_thread(
            liveml, {**env, "COLUMNS": "300"}, "rollout", "status", "clf"
        )
        assert "v2 at 100% (promoted)" in status.stdout and "at 50%" not in status.stdout
        assert "v1 (retired)" in status.stdout and "client errors" in status.stdout
        # The rude client's requests were counted apart, on both sides.
        assert sum(d["candidate"]["client_errors"] for d in (*steps, *promoted)) > 0
        assert sum(d["stable"]["client_errors"] for d in (*steps, *promoted)) > 0
        v2 = await c.stub.GetVersion(
            rpb.GetVersionRequest(name="models/clf/aliases/champion"), metadata=c.md
        )
        assert v2.version.number == 2 and v2.version.stage == rpb.STAGE_PRODUCTION
        assert [a.state for a in await alerts(c, "CanaryPromoted")] == [rpb.Alert.STATE_RESOLVED]
        assert not traffic.failures, traffic.failures[:3]


@pytest.mark.parametrize(
    ("build", "breach", "clients"),
    [
        (models.failing_classifier, "max_error_rate_delta", 4),
        # Few clients, so the box has spare CPU and only the candidate's own work is slow.
        (lambda p: models.slow_classifier(p, rounds=600), "max_p99_latency_ratio", 3),
        (lambda p: models.classifier(p, flip=True), "max_accuracy_drop", 4),
    ],
    ids=["errors", "slow", "inaccurate"],
)
async def test_bad_candidate_is_rolled_back(
    tmp_path: Path, build: Any, breach: str, clients: int
) -> None:
    async with serving(tmp_path) as (c, address):
        await c.push("clf", build(tmp_path / "v2.onnx"))
        traffic = Traffic(address, "clf", clients=clients)
        traffic.start()
        await start_canary(c, 2)
        back = await wait_phase(c, Phase.PHASE_ROLLED_BACK)
        rolled_back_at = time.monotonic()
        await async_wait_until(
            lambda: sum(1 for at, _ in traffic.answers if at > rolled_back_at + 1) >= 50,
            30,
            "answers after the rollback",
        )
        await traffic.stop()

        assert [(t.version, t.percent) for t in back.targets] == [(1, 100)]
        assert breach in back.status.last_decision
        (event,) = await audit(c, "CanaryRollback")
        assert event["breached"] == breach and event["actor"] == "controller"
        assert event["candidate"]["requests"] >= 30
        failed = [c for c in event["checks"] if not c["ok"]]
        assert failed and failed[0]["check"] == breach
        (alert,) = await alerts(c, "RolloutRolledBack", firing_only=True)
        assert alert.severity == rpb.Alert.SEVERITY_CRITICAL and breach in alert.summary
        assert_every_check_named(event, back.status.last_decision)
        # Only the failing candidate's own runs failed requests (INTERNAL, naming the
        # version and onnxruntime's error), and it gets none once rolled back.
        own = "INTERNAL: model 'clf' version 2 failed: "
        excused = [
            m for _, m in traffic.failures if breach == "max_error_rate_delta" and m.startswith(own)
        ]
        assert len(excused) == len(traffic.failures), traffic.failures[:3]
        assert all(at <= rolled_back_at + 1 for at, _ in traffic.failures)
        assert traffic.versions_after(rolled_back_at + 1) == {"1"}


async def test_candidate_that_never_becomes_ready_is_rolled_back(tmp_path: Path) -> None:
    async with serving(tmp_path) as (c, address):
        await c.push("clf", models.failing_classifier(tmp_path / "v2.onnx", always=True))
        traffic = Traffic(address, "clf", clients=2)
        traffic.start()
        await start_canary(c, 2, ready_timeout=seconds(3))
        back = await wait_phase(c, Phase.PHASE_ROLLED_BACK)
        await traffic.stop()
        assert "not READY on any worker within 3 s" in back.status.last_decision
        (event,) = await audit(c, "CanaryRollback")
        assert event["breached"] == "ready_timeout" and event["ready_workers"] == 0
        assert not traffic.failures, traffic.failures[:3]


async def test_too_little_data_fails_the_canary(tmp_path: Path) -> None:
    async with serving(tmp_path) as (c, _):
        await c.push("clf", models.classifier(tmp_path / "v2.onnx"))
        await c.wait_state("w1", "clf", 1, "READY")
        await start_canary(c, 2, step_interval=seconds(0.6), max_idle_intervals=3)
        back = await wait_phase(c, Phase.PHASE_ROLLED_BACK)
        assert "too little data" in back.status.last_decision
        assert "for 3 intervals in a row (max 3)" in back.status.last_decision
        waits = await audit(c, "CanaryWait")
        # The third interval without data is the last: as docs/architecture.md says.
        assert [w["idle_intervals"] for w in waits[::-1]] == [1, 2]
        (event,) = await audit(c, "CanaryRollback")
        assert event["breached"] == "min_requests" and event["idle_intervals"] == 3
        assert_every_check_named(event, back.status.last_decision)


async def test_accuracy_gated_canary_without_feedback_is_never_promoted(tmp_path: Path) -> None:
    """max_accuracy_drop asked for, traffic plentiful, no feedback at all: "no data" for
    accuracy each interval, then a rollback — a shuffled-label candidate cannot pass."""
    async with serving(tmp_path) as (c, address):
        await c.push("clf", models.classifier(tmp_path / "v2.onnx", flip=True))
        traffic = Traffic(address, "clf", clients=4, feedback=False)
        traffic.start()
        await start_canary(
            c, 2, step_interval=seconds(1.5), max_idle_intervals=2, max_p99_latency_ratio=5.0
        )
        back = await wait_phase(c, Phase.PHASE_ROLLED_BACK)
        await traffic.stop()
        assert not traffic.failures, traffic.failures[:3]
        assert not await audit(c, "CanaryStep") and not await audit(c, "CanaryPromote")
        (wait,) = await audit(c, "CanaryWait")
        (event,) = await audit(c, "CanaryRollback")
        assert event["breached"] == "no_data" and event["idle_intervals"] == 2
        for decision in (wait, event):
            assert decision["candidate"]["requests"] >= 30  # traffic was not the problem
            judged = {check["check"]: check for check in decision["checks"]}
            accuracy = judged["max_accuracy_drop"]
            assert accuracy["ok"] is None and accuracy["required"]
            assert "feedback labels needed each" in accuracy["no_data"]
        assert "max_accuracy_drop: no data (10 feedback labels needed each, v1 had 0" in (
            back.status.last_decision
        )


async def test_operator_pauses_resumes_and_aborts(tmp_path: Path) -> None:
    async with serving(tmp_path) as (c, address):
        await c.push("clf", models.classifier(tmp_path / "v2.onnx"))
        control = c.stub.ControlRollout
        A = rpb.ControlRolloutRequest
        name = "models/clf/rollout"
        with pytest.raises(aio.AioRpcError) as info:
            await control(A(name=name, action=A.ACTION_PAUSE), metadata=c.md)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "has no canary in progress to pause" in (info.value.details() or "")

        await start_canary(c, 2, step_interval=seconds(0.5))
        paused = await control(A(name=name, action=A.ACTION_PAUSE, reason="look"), metadata=c.md)
        assert paused.rollout.status.phase == Phase.PHASE_PAUSED
        traffic = Traffic(address, "clf", clients=4)
        traffic.start()
        await async_wait_until(lambda: len(traffic.answers) > 200, 30, "traffic while paused")
        held = await rollout(c)
        assert held.status.phase == Phase.PHASE_PAUSED and held.status.step_index == 0
        resumed = await control(A(name=name, action=A.ACTION_RESUME), metadata=c.md)
        assert resumed.rollout.status.phase == Phase.PHASE_PROGRESSING
        aborted = await control(A(name=name, action=A.ACTION_ABORT, reason="no"), metadata=c.md)
        await traffic.stop()
        assert aborted.rollout.status.phase == Phase.PHASE_ABORTED
        assert [(t.version, t.percent) for t in aborted.rollout.targets] == [(1, 100)]
        (event,) = await audit(c, "CanaryAbort")
        assert event["reason"].endswith(": no") and event["actor"].startswith("tokens/")
        with pytest.raises(aio.AioRpcError) as info:
            await control(A(name=name, action=A.ACTION_PROMOTE), metadata=c.md)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "(it is ABORTED)" in (info.value.details() or "")
        assert not traffic.failures


async def test_drift_raises_psi_and_its_alert_only_when_inputs_shift(tmp_path: Path) -> None:
    async with cluster(tmp_path, **FAST, LIVEML_DRIFT_ALERT_PSI="0.25") as c:
        await c.create_model("clf")
        train = np.random.default_rng(7).standard_normal((5000, 4)).astype(np.float32)
        reference = drift.reference_statistics({"x": train}, {"y": train @ models._scores(False)})
        await c.push("clf", models.classifier(tmp_path / "v1.onnx"), reference_statistics=reference)
        await c.route("clf", (1, 100))
        c.start_worker("w1", *DATA_PLANE)
        await c.wait_state("w1", "clf", 1, "READY")
        address = f"127.0.0.1:{c.start_gateway(*DATA_PLANE)}"

        async def psi() -> rpb.VersionMetrics | None:
            reply = await c.stub.GetVersionMetrics(
                rpb.GetVersionMetricsRequest(parent="models/clf", window=seconds(3)),
                metadata=c.md,
            )
            found = [m for m in reply.metrics if m.version == 1 and m.requests >= 400]
            return found[0] if found and found[0].drift_psi else None

        steady = Traffic(address, "clf", clients=4, feedback=False)
        steady.start()
        calm = await async_wait_until(psi, 30, "drift numbers without a shift")
        assert calm.max_drift_psi < 0.1, dict(calm.drift_psi)
        # Alerts are evaluated every 0.5 s; several rounds of the steady state raise none.
        for _ in range(3):
            current = await async_wait_until(psi, 30, "drift numbers")
            assert current.max_drift_psi < 0.25
        await steady.stop()
        assert not await alerts(c, "DriftHigh")

        shifted = Traffic(address, "clf", clients=4, feedback=False, mean=1.5)
        shifted.start()

        async def high() -> rpb.VersionMetrics | None:
            found = await psi()
            return found if found and found.max_drift_psi > 0.25 else None

        moved = await async_wait_until(high, 30, "drift PSI above 0.25")
        (alert,) = await async_wait_until(
            lambda: alerts(c, "DriftHigh", firing_only=True), 30, "DriftHigh alert"
        )
        await shifted.stop()
        assert moved.worst_feature.startswith(("x[", "y["))
        assert alert.severity == rpb.Alert.SEVERITY_WARNING and "PSI" in alert.summary


async def test_fairness_gap_is_measured_and_can_fail_a_canary(tmp_path: Path) -> None:
    async with serving(tmp_path) as (c, address):
        await c.push("clf", models.classifier(tmp_path / "v2.onnx"))
        # Group a sends inputs that are mostly positive, group b mostly negative.
        traffic = Traffic(address, "clf", clients=4, group_key="group", group_shift=1.5)
        traffic.start()
        await start_canary(c, 2, max_fairness_gap=0.3)
        back = await wait_phase(c, Phase.PHASE_ROLLED_BACK)

        async def labelled() -> rpb.GetVersionMetricsResponse | None:
            # Labels travel beside the requests: v1's windows count them a moment later.
            reply = await c.stub.GetVersionMetrics(
                rpb.GetVersionMetricsRequest(parent="models/clf"), metadata=c.md
            )
            v1 = next((m for m in reply.metrics if m.version == 1), None)
            ok = v1 is not None and len(v1.groups) == 2
            return reply if ok and all(g.feedback_total > 0 for g in v1.groups) else None

        reply = await async_wait_until(labelled, 30, "feedback in both of v1's groups")
        await traffic.stop()
        assert "max_fairness_gap" in back.status.last_decision
        (event,) = await audit(c, "CanaryRollback")
        assert event["breached"] == "max_fairness_gap"
        assert event["candidate"]["fairness_gap"] > 0.3
        v1 = next(m for m in reply.metrics if m.version == 1)
        groups = {g.group: g for g in v1.groups}
        assert set(groups) == {"a", "b"}
        rate = {name: g.positive / g.predictions for name, g in groups.items()}
        assert rate["a"] > 0.7 > 0.3 > rate["b"]
        assert v1.fairness_gap == pytest.approx(rate["a"] - rate["b"])
        assert all(g.feedback_total > 0 for g in groups.values())
        assert all(g.feedback_correct == g.feedback_total for g in groups.values())


async def test_one_controller_among_registries_and_failover(tmp_path: Path) -> None:
    """Two registry processes on one PostgreSQL: one leads; killing it hands over."""
    async with database("postgres", tmp_path) as url:
        env = {**FAST, "LIVEML_DATABASE_URL": url, "LIVEML_WATCH_POLL_SECONDS": "0.2"}
        a, _ = registry_process(tmp_path, **env, LIVEML_CONTROLLER_ID="A")
        a.expect("rollout controller A: leading")
        b, port_b = registry_process(tmp_path, **env, LIVEML_CONTROLLER_ID="B")
        b.expect("rollout controller B: standing by")
        admin = (tmp_path / "admin.token").read_text().strip()
        async with aio.insecure_channel(f"127.0.0.1:{port_b}") as channel:
            stub = rpb_grpc.RegistryServiceStub(channel)
            c = Cluster(tmp_path, b, port_b, admin, channel, stub)
            try:
                await c.create_model("clf")
                await c.push("clf", models.classifier(tmp_path / "v1.onnx"))
                await c.route("clf", (1, 100))
                c.start_worker("w1", *DATA_PLANE)
                c.start_worker("w2", *DATA_PLANE)
                await c.wait_state("w1", "clf", 1, "READY")
                address = f"127.0.0.1:{c.start_gateway(*DATA_PLANE)}"
                await c.push("clf", models.classifier(tmp_path / "v2.onnx"))
                traffic = Traffic(address, "clf", clients=4)
                traffic.start()
                await start_canary(c, 2, steps=[20, 40, 60, 100])

                async def first_step() -> list[dict[str, Any]]:
                    current = await rollout(c)
                    # A canary that ended instead of stepping says why, at once.
                    assert current.status.phase == Phase.PHASE_PROGRESSING, current.status
                    return await audit(c, "CanaryStep")

                (first,) = await async_wait_until(first_step, 60, "the first step")
                a.popen.kill()  # SIGKILL: no goodbye, the lease must expire
                a.popen.wait()
                done = await wait_phase(c, Phase.PHASE_PROMOTED)
                await traffic.stop()
                steps = (await audit(c, "CanaryStep"))[::-1]
                promoted = await audit(c, "CanaryPromote")
            finally:
                for gateway in c.gateways:
                    gateway.stop()
                for worker, _ in c.workers.values():
                    worker.stop()
                b.stop()
                a.stop()
        assert [(t.version, t.percent) for t in done.targets] == [(2, 100)]
        assert first["controller"] == "A"
        # Each step decided once, by whichever replica led at the time.
        assert [(s["from_percent"], s["to_percent"]) for s in steps] == [(20, 40), (40, 60)]
        assert [p["controller"] for p in promoted] == ["B"]
        assert "leading" in "".join(b.output).split("standing by", 1)[1]
        assert not traffic.failures, traffic.failures[:3]
