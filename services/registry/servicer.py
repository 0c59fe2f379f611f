"""RegistryService over gRPC: requests in, store calls, responses and statuses out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import select

from services.common import onnxsig
from services.common.auth import Role, current_principal
from services.common.errors import (
    DataLoss,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ServiceError,
    abort_on_error,
)
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc
from services.registry import (
    audit,
    catalog,
    names,
    rollouts,
    security,
    training_runs,
    windows,
    worker_identity,
)
from services.registry.alerts import Alerts
from services.registry.artifacts import CHUNK, ArtifactStore, BlobMismatch
from services.registry.controller import Controller
from services.registry.db import ModelRow, TokenRow
from services.registry.event_rpcs import EventService
from services.registry.event_stream import EventParts
from services.registry.fleet_rpcs import FleetService
from services.registry.names import page
from services.registry.security import actor
from services.registry.settings import RegistrySettings
from services.registry.store import Store, now_us
from services.registry.watch import Feed

Ctx = Any  # grpc.aio.ServicerContext (untyped)


class RegistryServicer(EventService, FleetService, rpb_grpc.RegistryServiceServicer):
    def __init__(
        self,
        settings: RegistrySettings,
        store: Store,
        artifacts: ArtifactStore,
        feed: Feed,
        alerts: Alerts,
        controller: Controller,
        events: EventParts,
    ) -> None:
        self.settings = settings
        self.store = store
        self.artifacts = artifacts
        self.feed = feed
        self.alerts = alerts
        self.controller = controller
        self.events = events.stream
        self.import_max_bytes = settings.import_max_bytes
        # Versions known to have reference statistics (checked once, then skipped).
        self._with_reference: set[tuple[str, int]] = set()

    # --- models ---------------------------------------------------------------------

    @abort_on_error
    async def CreateModel(self, request: rpb.CreateModelRequest, context: Ctx) -> Any:
        async with self.store.write(actor()) as tx:
            model = await catalog.create_model(tx, request.model_id, request.model)
        return rpb.CreateModelResponse(model=model)

    @abort_on_error
    async def GetModel(self, request: rpb.GetModelRequest, context: Ctx) -> Any:
        async with self.store.read() as session:
            row = await catalog.model_row(session, names.model(request.name))
        return rpb.GetModelResponse(model=catalog.model_proto(row))

    @abort_on_error
    async def ListModels(self, request: rpb.ListModelsRequest, context: Ctx) -> Any:
        size = names.page_size(request.page_size)
        query = select(ModelRow)
        if request.page_token:
            query = query.where(ModelRow.name > names.decode_page(request.page_token))
        async with self.store.read() as session:
            rows, token = await page(session, query.order_by(ModelRow.name), size, lambda r: r.name)
        return rpb.ListModelsResponse(
            models=[catalog.model_proto(r) for r in rows], next_page_token=token
        )

    @abort_on_error
    async def UpdateModel(self, request: rpb.UpdateModelRequest, context: Ctx) -> Any:
        async with self.store.write(actor()) as tx:
            model = await catalog.update_model(tx, request.model, request.update_mask)
        return rpb.UpdateModelResponse(model=model)

    @abort_on_error
    async def DeleteModel(self, request: rpb.DeleteModelRequest, context: Ctx) -> Any:
        async with self.store.write(actor()) as tx:
            await catalog.delete_model(tx, request.name)
        return rpb.DeleteModelResponse()

    # --- versions and artifacts -----------------------------------------------------------

    @abort_on_error
    async def CreateVersion(
        self, requests: AsyncIterator[rpb.CreateVersionRequest], context: Ctx
    ) -> Any:
        first = await anext(aiter(requests), None)
        if first is None or first.WhichOneof("part") != "metadata":
            raise InvalidArgument("the first CreateVersion message must carry metadata")
        meta = first.metadata
        model_id = names.model(meta.parent)
        if meta.format not in (rpb.ARTIFACT_FORMAT_UNSPECIFIED, rpb.ARTIFACT_FORMAT_ONNX):
            raise InvalidArgument("only ARTIFACT_FORMAT_ONNX artifacts are supported")
        async with self.store.read() as session:
            await catalog.model_row(session, model_id)  # fail before receiving any bytes

        async def chunks() -> AsyncIterator[bytes]:
            async for message in requests:
                if message.WhichOneof("part") != "chunk":
                    raise InvalidArgument("only the first CreateVersion message may carry metadata")
                yield message.chunk

        staged = await self.artifacts.stage(chunks(), meta.sha256, meta.size_bytes)
        try:
            signature = await asyncio.to_thread(onnxsig.inspect_model, staged.path)
            async with self.store.read() as session:
                await catalog.check_signature(session, model_id, signature)
            key_id = await asyncio.to_thread(self.artifacts.commit, staged)
        finally:
            staged.discard()
        artifact = rpb.Artifact(
            sha256=staged.sha256,
            size_bytes=staged.size,
            format=rpb.ARTIFACT_FORMAT_ONNX,
            key_id=key_id,
        )
        async with self.store.write(actor()) as tx:
            version = await catalog.create_version(tx, model_id, meta.version, artifact, signature)
            if "/trainingRuns/" in version.lineage.pipeline_run:  # a run's: one per run
                await training_runs.claim_version(
                    tx, version.lineage.pipeline_run, model_id, version.number
                )
        return rpb.CreateVersionResponse(version=version)

    @abort_on_error
    async def GetVersion(self, request: rpb.GetVersionRequest, context: Ctx) -> Any:
        async with self.store.read() as session:
            _, row = await catalog.version_row(session, request.name)
        return rpb.GetVersionResponse(version=catalog.version_proto(row))

    @abort_on_error
    async def ListVersions(self, request: rpb.ListVersionsRequest, context: Ctx) -> Any:
        async with self.store.read() as session:
            versions, token = await catalog.list_versions(
                session, request.parent, names.page_size(request.page_size), request.page_token
            )
        return rpb.ListVersionsResponse(versions=versions, next_page_token=token)

    @abort_on_error
    async def UpdateVersion(self, request: rpb.UpdateVersionRequest, context: Ctx) -> Any:
        principal = current_principal()
        if (
            "stage" in request.update_mask.paths
            and request.version.stage == rpb.STAGE_PRODUCTION
            and principal is not None
            and principal.role not in (Role.ADMIN, Role.DEPLOYER)
        ):
            # Going to production is a deployer's decision, not the publisher's.
            raise PermissionDenied(
                f"{principal.name} (role {principal.role.value}) may not set a version's "
                "stage to STAGE_PRODUCTION; it needs one of: admin, deployer"
            )
        async with self.store.write(actor()) as tx:
            version = await catalog.update_version(tx, request.version, request.update_mask)
        return rpb.UpdateVersionResponse(version=version)

    @abort_on_error
    async def ReviewVersion(self, request: rpb.ReviewVersionRequest, context: Ctx) -> Any:
        async with self.store.write(actor()) as tx:
            version = await catalog.review_version(
                tx, request.name, request.decision, request.reason
            )
            if version.approval.state == rpb.APPROVAL_STATE_APPROVED:
                await training_runs.on_approved(tx, version)
        return rpb.ReviewVersionResponse(version=version)

    @abort_on_error
    async def DownloadArtifact(
        self, request: rpb.DownloadArtifactRequest, context: Ctx
    ) -> AsyncIterator[rpb.DownloadArtifactResponse]:
        async with self.store.read() as session:
            _, row = await catalog.version_row(session, request.name)
        version = catalog.version_proto(row)
        artifact = rpb.Artifact()
        artifact.CopyFrom(version.artifact)
        # How it is kept at rest now (an old blob is sealed again as it is read): a
        # worker keeps no plaintext copy of a sealed artifact.
        artifact.key_id = await asyncio.to_thread(self.artifacts.served_key_id, artifact.sha256)
        yield rpb.DownloadArtifactResponse(artifact=artifact)
        blocks = self.artifacts.read(artifact.sha256)
        while True:
            try:
                block = await asyncio.to_thread(next, blocks, None)
            except BlobMismatch as exc:
                raise DataLoss(
                    f"the stored blob of {version.name} does not belong to it: {exc.message}; "
                    "the download is refused (restore the blob or register the version again)"
                ) from None
            if block is None:
                return
            for start in range(0, len(block), CHUNK):
                yield rpb.DownloadArtifactResponse(chunk=block[start : start + CHUNK])

    # --- aliases ----------------------------------------------------------------------------

    @abort_on_error
    async def SetAlias(self, request: rpb.SetAliasRequest, context: Ctx) -> Any:
        async with self.store.write(actor()) as tx:
            model = await catalog.set_alias(tx, request.parent, request.alias, request.version)
        return rpb.SetAliasResponse(model=model)

    @abort_on_error
    async def DeleteAlias(self, request: rpb.DeleteAliasRequest, context: Ctx) -> Any:
        async with self.store.write(actor()) as tx:
            model = await catalog.delete_alias(tx, request.parent, request.alias)
        return rpb.DeleteAliasResponse(model=model)

    # --- rollouts ---------------------------------------------------------------------------

    @abort_on_error
    async def GetRollout(self, request: rpb.GetRolloutRequest, context: Ctx) -> Any:
        async with self.store.read() as session:
            rollout = await rollouts.get(session, request.name)
            shares, held = await rollouts.serving_now(session, rollout)
        return rpb.GetRolloutResponse(rollout=rollout, serving=shares, held=held)

    @abort_on_error
    async def UpdateRollout(self, request: rpb.UpdateRolloutRequest, context: Ctx) -> Any:
        async with self.store.write(actor()) as tx:
            rollout = await rollouts.update(
                tx, request.rollout, request.expected_revision, request.force
            )
            # An operator's new rollout settles what the last canary's rollback raised.
            await self.alerts.resolve_model(
                tx, names.rollout(rollout.name), ("RolloutRolledBack",), "rollout replaced"
            )
        return rpb.UpdateRolloutResponse(rollout=rollout)

    @abort_on_error
    async def ListRolloutHistory(self, request: rpb.ListRolloutHistoryRequest, context: Ctx) -> Any:
        async with self.store.read() as session:
            states, token = await rollouts.history(
                session, request.name, names.page_size(request.page_size), request.page_token
            )
        return rpb.ListRolloutHistoryResponse(rollouts=states, next_page_token=token)

    @abort_on_error
    async def RollbackRollout(self, request: rpb.RollbackRolloutRequest, context: Ctx) -> Any:
        async with self.store.write(actor()) as tx:
            rollout = await rollouts.rollback(tx, request.name)
        return rpb.RollbackRolloutResponse(rollout=rollout)

    @abort_on_error
    async def ControlRollout(self, request: rpb.ControlRolloutRequest, context: Ctx) -> Any:
        rollout = await self.controller.control(
            request.name, request.action, request.reason, actor()
        )
        return rpb.ControlRolloutResponse(rollout=rollout)

    # --- windows and alerts -----------------------------------------------------------------

    @abort_on_error
    async def ReportWindows(self, request: rpb.ReportWindowsRequest, context: Ctx) -> Any:
        for window in request.windows:
            windows.check(window)
        async with self.store.write_unversioned() as session:
            await worker_identity.check_windows(session, request.windows)
            accepted = await windows.store(session, request.windows)
        for window in request.windows:
            if window.source == windows.WORKER and (window.inputs or window.outputs):
                await self._adopt_reference(window)
        return rpb.ReportWindowsResponse(accepted=accepted)

    async def _adopt_reference(self, window: rpb.Window) -> None:
        key = (window.model, window.version)
        if key in self._with_reference:
            return
        try:
            async with self.store.write("registry") as tx:
                await windows.adopt_reference(tx, window)
        except ServiceError:
            return  # e.g. a version deleted since: its windows age out
        self._with_reference.add(key)

    @abort_on_error
    async def GetVersionMetrics(self, request: rpb.GetVersionMetricsRequest, context: Ctx) -> Any:
        model = names.model(request.parent)
        seconds = names.seconds(request.window, "window") or 300.0
        async with self.store.read() as session:
            await catalog.model_row(session, model)
            measured = await windows.summarize(session, model, now_us() - int(seconds * 1e6))
        return rpb.GetVersionMetricsResponse(metrics=[measured[v] for v in sorted(measured)])

    @abort_on_error
    async def ListAlerts(self, request: rpb.ListAlertsRequest, context: Ctx) -> Any:
        found, token = await self.alerts.page(
            request.firing_only,
            request.model,
            names.page_size(request.page_size),
            request.page_token,
        )
        return rpb.ListAlertsResponse(alerts=found, next_page_token=token)

    @abort_on_error
    async def WatchAlerts(
        self, request: rpb.WatchAlertsRequest, context: Ctx
    ) -> AsyncIterator[rpb.WatchAlertsResponse]:
        if request.since_sequence < 0:
            raise InvalidArgument("since_sequence must not be negative")
        async for changed in self.alerts.watch(request.since_sequence):
            yield rpb.WatchAlertsResponse(alerts=changed)

    # --- tokens -----------------------------------------------------------------------------

    @abort_on_error
    async def CreateToken(self, request: rpb.CreateTokenRequest, context: Ctx) -> Any:
        role = security.PROTO_TO_ROLE.get(request.role)
        if role is None:
            raise InvalidArgument(
                "role must be one of ROLE_ADMIN, ROLE_DEPLOYER, ROLE_PUBLISHER, ROLE_VIEWER, "
                "ROLE_WORKER, ROLE_CLIENT, ROLE_INGEST, ROLE_GATEWAY, ROLE_TRAINER"
            )
        if not request.display_name:
            raise InvalidArgument("display_name is required: say who or what the token is for")
        if request.worker_id:
            if role is not Role.WORKER:
                raise InvalidArgument(
                    f"worker_id binds a token of role worker to one worker; this token's "
                    f"role is {role.value}"
                )
            names.check_id("worker", request.worker_id)
        ttl = names.seconds(request.ttl, "ttl") or self.settings.token_ttl
        async with self.store.write(actor()) as tx:
            row, secret = await security.create_token(
                tx, request.display_name, role, ttl, worker_id=request.worker_id
            )
            token = security.token_proto(row)
            details = {"role": role.value}
            if request.worker_id:
                details["worker_id"] = request.worker_id
            await tx.audit("CreateToken", token.name, None, token, details)
        return rpb.CreateTokenResponse(token=token, secret=secret)

    @abort_on_error
    async def ListTokens(self, request: rpb.ListTokensRequest, context: Ctx) -> Any:
        async with self.store.read() as session:
            rows = (await session.execute(select(TokenRow).order_by(TokenRow.create_us))).scalars()
            return rpb.ListTokensResponse(tokens=[security.token_proto(r) for r in rows])

    @abort_on_error
    async def RevokeToken(self, request: rpb.RevokeTokenRequest, context: Ctx) -> Any:
        token_id = names.simple("tokens", request.name)
        async with self.store.write(actor()) as tx:
            row = await tx.session.get(TokenRow, token_id)
            if row is None:
                raise NotFound(f"token tokens/{token_id} not found")
            before = security.token_proto(row)
            row.revoked = True
            after = security.token_proto(row)
            tx.put(security.credential_proto(row), after.name)
            await tx.audit("RevokeToken", after.name, before, after)
        return rpb.RevokeTokenResponse(token=after)

    # --- audit ------------------------------------------------------------------------------

    @abort_on_error
    async def ListAuditEvents(self, request: rpb.ListAuditEventsRequest, context: Ctx) -> Any:
        async with self.store.read() as session:
            events, token = await audit.list_events(
                session, names.page_size(request.page_size), request.page_token, request.target
            )
        return rpb.ListAuditEventsResponse(events=events, next_page_token=token)

    @abort_on_error
    async def VerifyAudit(self, request: rpb.VerifyAuditRequest, context: Ctx) -> Any:
        async with self.store.read() as session:
            chain = self.store.audit_chain
            assert chain is not None  # app.start gives the store its audit keys
            verdict = await audit.verify(session, chain)
        return rpb.VerifyAuditResponse(
            ok=verdict.ok,
            events_checked=verdict.checked,
            first_bad_sequence=verdict.first_bad,
            problem=verdict.problem,
            checkpoint_sequence=verdict.checkpoint,
            key_id=chain.keys.current_id,
        )
