"""Reported windows, per-version numbers, reference adoption, alerts (list, watch, webhook)
and the registry's /metrics — with windows sent straight to a real registry."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import grpc
import numpy as np
import pytest

from services.common import drift
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.windows import LATENCY_BOUNDS, FeatureCounts, WindowBook
from tests.conftest import free_port
from tests.helpers.models import linear
from tests.helpers.registry import Client, RunningRegistry, registry_settings, running_registry
from tests.helpers.wait import async_wait_until
from tests.integration.test_registry_catalog import expect_error, push
from tests.integration.test_registry_rollouts import rollout

GATEWAY, WORKER = rpb.WINDOW_SOURCE_GATEWAY, rpb.WINDOW_SOURCE_WORKER


def window(version: int, source: int = GATEWAY, **fields: Any) -> rpb.Window:
    w = rpb.Window(model="iris", version=version, source=source, reporter="gateways/t", **fields)
    w.end_time.FromNanoseconds(time.time_ns())
    w.start_time.FromNanoseconds(time.time_ns() - 1_000_000_000)
    return w


def latency(seconds: list[float]) -> rpb.Histogram:
    book = WindowBook(GATEWAY, "t")
    for s in seconds:
        book.request("iris", 1, s)
    return book.drain()[0].latency


@pytest.fixture
async def iris(registry: RunningRegistry, tmp_path: Path) -> RunningRegistry:
    client = registry.client()
    await client.CreateModel(rpb.CreateModelRequest(model_id="iris"))
    for seed in (1, 2):
        await push(client, "iris", linear(tmp_path / f"v{seed}.onnx", seed=seed).read_bytes())
    await client.UpdateRollout(rollout((1, 100)))
    return registry


async def worker_client(registry: RunningRegistry) -> Client:
    """What reports windows here: windows of `gateways/t` (both sources) and a worker
    that registers as `w1` — a token of role gateway can report only gateway windows,
    one of role worker only its own worker's (tests/integration/test_worker_identity.py)."""
    return registry.client()


async def test_windows_are_summed_per_version(iris: RunningRegistry) -> None:
    reporter = await worker_client(iris)
    fast = latency([0.001] * 99 + [0.02])
    slow = latency([0.004] * 99 + [0.08])
    await reporter.ReportWindows(
        rpb.ReportWindowsRequest(
            windows=[
                window(1, requests=100, latency=fast, feedback_correct=45, feedback_total=50),
                window(1, requests=100, errors={"INTERNAL": 2}, latency=fast),
                window(2, requests=50, errors={"INTERNAL": 5}, latency=slow),
                # Worker windows carry the same requests again: not counted twice.
                window(1, WORKER, requests=200),
            ]
        )
    )
    reply = await iris.client().GetVersionMetrics(
        rpb.GetVersionMetricsRequest(parent="models/iris")
    )
    got = {m.version: m for m in reply.metrics}
    assert (got[1].requests, got[1].errors) == (200, 2)
    assert got[1].error_rate == pytest.approx(0.01)
    assert got[1].accuracy == pytest.approx(0.9) and got[1].feedback_total == 50
    assert (got[2].requests, got[2].error_rate) == (50, pytest.approx(0.1))
    assert 0.0005 < got[1].p50_seconds <= 0.0015 and 0.003 < got[2].p50_seconds <= 0.0055
    assert got[2].p99_seconds > 3 * got[1].p99_seconds


async def test_a_report_sent_again_is_counted_once(iris: RunningRegistry) -> None:
    """A reporter whose answer was lost sends the same windows again (services.common.windows)."""
    reporter = await worker_client(iris)
    first = [window(1, requests=100, latency=latency([0.001] * 100)), window(2, requests=7)]
    for _ in range(3):
        reply = await reporter.ReportWindows(rpb.ReportWindowsRequest(windows=first))
        assert reply.accepted == 2
    later = window(1, requests=50, latency=latency([0.001] * 50))
    await reporter.ReportWindows(rpb.ReportWindowsRequest(windows=[later, later, first[1]]))
    reply = await iris.client().GetVersionMetrics(
        rpb.GetVersionMetricsRequest(parent="models/iris")
    )
    got = {m.version: m.requests for m in reply.metrics}
    assert got == {1: 150, 2: 7}


async def test_bad_windows_are_refused_and_store_nothing(iris: RunningRegistry) -> None:
    reporter = await worker_client(iris)
    bad_latency = rpb.Histogram(bounds=[0.1], counts=[1])
    bad_feature = rpb.FeatureHistogram(name="x", bin_edges=[0, 1, 2], counts=[1])
    for w, message in [
        (window(0), "each window needs a model and a positive version"),
        (window(1, source=rpb.WINDOW_SOURCE_UNSPECIFIED), "window source must be"),
        (window(1, latency=bad_latency), "latency histogram needs one more count than bounds"),
        (window(1, WORKER, inputs=[bad_feature]), "feature 'x': needs one count per bin"),
    ]:
        await expect_error(
            reporter.ReportWindows(rpb.ReportWindowsRequest(windows=[window(1, requests=9), w])),
            grpc.StatusCode.INVALID_ARGUMENT,
            message,
        )
    viewer = iris.client(await iris.token(rpb.ROLE_CLIENT, "c"))
    await expect_error(
        viewer.ReportWindows(rpb.ReportWindowsRequest(windows=[window(1)])),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await expect_error(
        iris.client().GetVersionMetrics(rpb.GetVersionMetricsRequest(parent="models/nope")),
        grpc.StatusCode.NOT_FOUND,
        "model 'nope' not found",
    )
    reply = await iris.client().GetVersionMetrics(
        rpb.GetVersionMetricsRequest(parent="models/iris")
    )
    assert not reply.metrics


async def test_first_worker_window_becomes_the_reference(iris: RunningRegistry) -> None:
    counts = FeatureCounts(None, learn_rows=100)
    rng = np.random.default_rng(0)
    for _ in range(300):
        counts.observe({"x": rng.standard_normal((1, 4)).astype(np.float32)}, {})
    inputs, _ = counts.drain()
    assert [f.name for f in inputs] == ["x[0]", "x[1]", "x[2]", "x[3]"]
    assert all(sum(f.counts) == 300 for f in inputs)
    await (await worker_client(iris)).ReportWindows(
        rpb.ReportWindowsRequest(windows=[window(1, WORKER, inputs=inputs)])
    )
    got = await iris.client().GetVersion(rpb.GetVersionRequest(name="models/iris/versions/1"))
    reference = got.version.reference_statistics
    assert [f.name for f in reference.inputs] == ["x[0]", "x[1]", "x[2]", "x[3]"]
    assert list(reference.inputs[0].bin_edges) == list(inputs[0].bin_edges)
    assert sum(reference.inputs[0].bin_fractions) == pytest.approx(1.0)
    events = await iris.client().ListAuditEvents(
        rpb.ListAuditEventsRequest(target="models/iris/versions/1")
    )
    assert "AdoptReferenceStatistics" in [e.action for e in events.events]
    # The same traffic measured against it drifts not at all.
    measured = await iris.client().GetVersionMetrics(
        rpb.GetVersionMetricsRequest(parent="models/iris")
    )
    (v1,) = measured.metrics
    assert set(v1.drift_psi) == {"x[0]", "x[1]", "x[2]", "x[3]"}
    assert v1.max_drift_psi == pytest.approx(0.0, abs=1e-9)


class Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def webhook() -> Iterator[str]:
    Hook.received = []
    server = HTTPServer(("127.0.0.1", free_port()), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/alerts"
    finally:
        server.shutdown()


async def test_alerts_are_listed_watched_and_posted(db_url: str, tmp_path: Path) -> None:
    with webhook() as url:
        settings = registry_settings(
            db_url,
            tmp_path,
            alert_webhook=url,
            ready_alert_seconds=0,
            monitor_seconds=0.1,
            controller_seconds=0.1,
            metrics_port=0,
        )
        async with running_registry(settings) as registry:
            client = registry.client()
            watch = client.WatchAlerts(rpb.WatchAlertsRequest())
            await client.CreateModel(rpb.CreateModelRequest(model_id="iris"))
            await push(client, "iris", linear(tmp_path / "v1.onnx").read_bytes())
            reference = drift.reference_statistics(
                {"x": np.random.default_rng(0).standard_normal((2000, 4))}, {}
            )
            await client.UpdateVersion(
                rpb.UpdateVersionRequest(
                    version=rpb.Version(
                        name="models/iris/versions/1", reference_statistics=reference
                    ),
                    update_mask={"paths": ["reference_statistics"]},
                )
            )
            await client.UpdateRollout(rollout((1, 100)))

            # No worker holds v1: NoReadyWorker fires, is watched and posted.
            first = (await asyncio.wait_for(watch.read(), 10)).alerts[0]
            assert (first.alert, first.state) == ("NoReadyWorker", rpb.Alert.STATE_FIRING)
            assert first.severity == rpb.Alert.SEVERITY_CRITICAL and first.version == 1
            await async_wait_until(lambda: Hook.received, 10, "the webhook's POST")
            assert Hook.received[0]["alert"] == "NoReadyWorker"
            assert Hook.received[0]["state"] == "STATE_FIRING"

            # A worker with v1 READY resolves it.
            worker = await worker_client(registry)
            await worker.RegisterWorker(
                rpb.RegisterWorkerRequest(
                    worker=rpb.Worker(
                        name="workers/w1",
                        address="127.0.0.1:1",
                        versions=[
                            rpb.WorkerVersionState(
                                model="iris", version=1, state=rpb.VERSION_LOAD_STATE_READY
                            )
                        ],
                    )
                )
            )
            resolved = (await asyncio.wait_for(watch.read(), 10)).alerts[0]
            assert (resolved.alert, resolved.state) == ("NoReadyWorker", rpb.Alert.STATE_RESOLVED)
            assert resolved.sequence > first.sequence and "READY worker" in resolved.summary

            # Shifted inputs raise DriftHigh, with the worst feature named.
            shifted = FeatureCounts(reference)
            shifted.observe({"x": np.random.default_rng(1).normal(2, 1, (500, 4))}, {})
            inputs, _ = shifted.drain()
            await worker.ReportWindows(
                rpb.ReportWindowsRequest(windows=[window(1, WORKER, inputs=inputs, requests=500)])
            )
            drifted = (await asyncio.wait_for(watch.read(), 10)).alerts[0]
            assert drifted.alert == "DriftHigh" and "PSI" in drifted.summary
            assert drifted.state == rpb.Alert.STATE_FIRING
            assert json.loads(drifted.details)["worst_feature"].startswith("x[")

            listed = await client.ListAlerts(rpb.ListAlertsRequest(firing_only=True))
            assert [a.alert for a in listed.alerts] == ["DriftHigh"]
            everything = await client.ListAlerts(rpb.ListAlertsRequest(model="iris"))
            assert [a.alert for a in everything.alerts] == ["DriftHigh", "NoReadyWorker"]

            # The same numbers on /metrics, for Prometheus' rules.
            port = registry.registry.running.metrics_port
            page = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read()
            )
            text = page.decode()
            assert (
                'liveml_rollout_target_percent{model="iris",role="target",version="1"} 100.0'
                in text
            )
            assert 'liveml_version_ready_workers{model="iris",version="1"} 1.0' in text
            assert (
                'liveml_alerts_firing{alert="DriftHigh",model="iris",severity="warning",version="1"} 1.0'
                in text
            )
            assert 'liveml_rollout_rollbacks_total{model="iris"} 0.0' in text
            # Its lease sweeps judged every lease (neither stalled nor behind).
            assert 'liveml_registry_lease_sweeps_held_total{reason="behind"} 0.0' in text
            assert 'liveml_registry_lease_sweeps_held_total{reason="stalled"} 0.0' in text
            psi_line = next(
                line
                for line in text.splitlines()
                if line.startswith("liveml_version_drift_psi_max")
            )
            assert float(psi_line.split()[-1]) > 0.25
            watch.cancel()


async def test_watch_alerts_refuses_a_negative_sequence(registry: RunningRegistry) -> None:
    call = registry.client().WatchAlerts(rpb.WatchAlertsRequest(since_sequence=-1))
    await expect_error(call.read(), grpc.StatusCode.INVALID_ARGUMENT, "since_sequence")


def test_latency_bounds_are_shared_by_book_and_summary() -> None:
    assert latency([0.001]).bounds == list(LATENCY_BOUNDS)


async def test_old_windows_are_pruned(db_url: str, tmp_path: Path) -> None:
    settings = registry_settings(db_url, tmp_path, keep_windows_seconds=6, controller_seconds=0.1)
    async with running_registry(settings) as registry:
        client = registry.client()
        await client.CreateModel(rpb.CreateModelRequest(model_id="iris"))
        await push(client, "iris", linear(tmp_path / "v1.onnx").read_bytes())
        old = window(1, requests=5)
        old.end_time.FromNanoseconds(time.time_ns() - 30 * 1_000_000_000)
        await (await worker_client(registry)).ReportWindows(
            rpb.ReportWindowsRequest(windows=[old, window(1, requests=7)])
        )
        query = rpb.GetVersionMetricsRequest(parent="models/iris")
        query.window.FromSeconds(600)

        async def requests() -> int:
            reply = await client.GetVersionMetrics(query)
            return sum(m.requests for m in reply.metrics)

        assert await requests() == 12
        await async_wait_until(lambda: _is(requests(), 7), 10, "the old window pruned")
        await async_wait_until(lambda: _is(requests(), 0), 20, "the recent one pruned in turn")


async def _is(value: Any, expected: int) -> bool:
    return bool(await value == expected)
