"""Registry on PostgreSQL under concurrency: version numbers, and several registry processes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from grpc import aio

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc
from tests.helpers.models import linear
from tests.helpers.procs import Proc, registry_process
from tests.helpers.registry import (
    auth,
    database,
    registry_settings,
    running_registry,
    stream,
    upload,
)
from tests.helpers.wait import async_wait_until
from tests.integration.test_registry_rollouts import rollout

KIND = rpb.WatchResponse


async def test_concurrent_create_version_numbers_are_distinct_and_gap_free(tmp_path: Path) -> None:
    async with (
        database("postgres", tmp_path) as url,
        running_registry(registry_settings(url, tmp_path)) as registry,
    ):
        client = registry.client()
        await client.CreateModel(rpb.CreateModelRequest(model_id="iris"))
        payloads = [linear(tmp_path / f"v{i}.onnx", seed=i).read_bytes() for i in range(20)]
        replies = await asyncio.gather(
            *(client.CreateVersion(stream(upload("models/iris", data))) for data in payloads)
        )
        numbers = sorted(r.version.number for r in replies)
        assert numbers == list(range(1, 21))
        by_digest = {r.version.artifact.sha256: r.version.number for r in replies}
        assert len(by_digest) == 20
        model = await client.GetModel(rpb.GetModelRequest(name="models/iris"))
        assert model.model.latest_version == 20


def start_registry(url: str, tmp_path: Path, token_file: Path) -> tuple[Proc, int]:
    return registry_process(
        tmp_path,
        LIVEML_DATABASE_URL=url,
        LIVEML_ADMIN_TOKEN_FILE=str(token_file),
        LIVEML_WATCH_POLL_SECONDS="5",  # NOTIFY must do the work, not polling
    )


async def test_watch_on_one_registry_sees_writes_through_another(tmp_path: Path) -> None:
    async with database("postgres", tmp_path) as url:
        token_file = tmp_path / "admin.token"
        a, port_a = start_registry(url, tmp_path, token_file)
        b, port_b = start_registry(url, tmp_path, token_file)
        try:
            token = token_file.read_text().strip()
            md = auth(token)
            async with (
                aio.insecure_channel(f"127.0.0.1:{port_a}") as ch_a,
                aio.insecure_channel(f"127.0.0.1:{port_b}") as ch_b,
            ):
                via_a = rpb_grpc.RegistryServiceStub(ch_a)
                via_b = rpb_grpc.RegistryServiceStub(ch_b)
                await via_a.CreateModel(rpb.CreateModelRequest(model_id="iris"), metadata=md)
                for seed in range(2):
                    data = linear(tmp_path / f"v{seed}.onnx", seed=seed).read_bytes()
                    await via_a.CreateVersion(stream(upload("models/iris", data)), metadata=md)

                watch = via_b.Watch(rpb.WatchRequest(since_revision=0), metadata=md)
                snapshot = await asyncio.wait_for(watch.read(), 10)
                assert snapshot.kind == KIND.KIND_SNAPSHOT
                last = snapshot.revision
                written = []
                for percent in (10, 50):
                    started = time.monotonic()
                    reply = await via_a.UpdateRollout(
                        rollout((1, 100 - percent), (2, percent)), metadata=md
                    )
                    written.append(reply.rollout.revision)
                    while True:
                        response = await asyncio.wait_for(watch.read(), 5)
                        if response.kind == KIND.KIND_EVENTS:
                            break
                    elapsed = time.monotonic() - started
                    assert response.revision == reply.rollout.revision
                    assert response.events[0].rollout.targets[1].percent == percent
                    assert elapsed < 1.0, f"change reached the other registry after {elapsed:.2f} s"
                    last = response.revision
                watch.cancel()

                # Disconnected: writes through A; resume on B from the last revision seen.
                for percent in (20, 30, 40):
                    reply = await via_a.UpdateRollout(
                        rollout((1, 100 - percent), (2, percent)), metadata=md
                    )
                    written.append(reply.rollout.revision)
                watch = via_b.Watch(rpb.WatchRequest(since_revision=last), metadata=md)
                seen = written[:2]
                while len(seen) < len(written):
                    response = await asyncio.wait_for(watch.read(), 10)
                    assert response.kind != KIND.KIND_SNAPSHOT
                    seen += [e.revision for e in response.events]
                assert seen == written
                watch.cancel()
        finally:
            assert a.stop() == 0
            assert b.stop() == 0


async def test_registry_restarts_on_same_database_keep_state(tmp_path: Path) -> None:
    async with database("postgres", tmp_path) as url:
        settings = registry_settings(url, tmp_path)
        async with running_registry(settings) as registry:
            await registry.client().CreateModel(rpb.CreateModelRequest(model_id="iris"))
        async with running_registry(settings) as registry:

            async def has_model() -> bool:
                reply = await registry.client().ListModels(rpb.ListModelsRequest())
                return [m.name for m in reply.models] == ["models/iris"]

            await async_wait_until(has_model, 5, "model to survive the restart")
