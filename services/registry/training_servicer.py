"""TrainingService over gRPC: training policies and runs, kept by the registry."""

from __future__ import annotations

from typing import Any

from services.common.errors import InvalidArgument, abort_on_error
from services.common.gen.liveml.training.v1 import training_pb2 as tpb
from services.common.gen.liveml.training.v1 import training_pb2_grpc as tpb_grpc
from services.registry import learners, names, training_policies, training_runs
from services.registry.alerts import Alerts
from services.registry.artifacts import ArtifactStore
from services.registry.security import actor
from services.registry.store import Store

Ctx = Any  # grpc.aio.ServicerContext (untyped)


def _lease(request: Any) -> float:
    seconds: float = request.lease_duration.ToNanoseconds() / 1e9
    if seconds <= 0 or seconds > 3600:
        raise InvalidArgument(f"lease_duration must be within (0, 3600] s, got {seconds:g} s")
    return seconds


class TrainingServicer(tpb_grpc.TrainingServiceServicer):
    def __init__(self, store: Store, alerts: Alerts, artifacts: ArtifactStore) -> None:
        self.store = store
        self.alerts = alerts
        self.artifacts = artifacts

    @abort_on_error
    async def SetTrainingPolicy(self, request: tpb.SetTrainingPolicyRequest, context: Ctx) -> Any:
        async with self.store.write(actor()) as tx:
            policy = await training_policies.put(tx, request.policy)
        return tpb.SetTrainingPolicyResponse(policy=policy)

    @abort_on_error
    async def GetTrainingPolicy(self, request: tpb.GetTrainingPolicyRequest, context: Ctx) -> Any:
        async with self.store.read() as session:
            policy = await training_policies.get(session, request.name)
        return tpb.GetTrainingPolicyResponse(policy=policy)

    @abort_on_error
    async def ListTrainingPolicies(
        self, request: tpb.ListTrainingPoliciesRequest, context: Ctx
    ) -> Any:
        async with self.store.read() as session:
            policies = await training_policies.all_policies(session)
        return tpb.ListTrainingPoliciesResponse(policies=policies)

    @abort_on_error
    async def DeleteTrainingPolicy(
        self, request: tpb.DeleteTrainingPolicyRequest, context: Ctx
    ) -> Any:
        async with self.store.write(actor()) as tx:
            await training_policies.remove(tx, request.name)
        return tpb.DeleteTrainingPolicyResponse()

    @abort_on_error
    async def RequestTrainingRun(self, request: tpb.RequestTrainingRunRequest, context: Ctx) -> Any:
        async with self.store.write(actor()) as tx:
            run, created = await training_runs.request(
                tx, request.parent, request.trigger, request.reason
            )
        return tpb.RequestTrainingRunResponse(run=run, created=created)

    @abort_on_error
    async def GetTrainingRun(self, request: tpb.GetTrainingRunRequest, context: Ctx) -> Any:
        async with self.store.read() as session:
            run = await training_runs.get(session, request.name)
        return tpb.GetTrainingRunResponse(run=run)

    @abort_on_error
    async def ListTrainingRuns(self, request: tpb.ListTrainingRunsRequest, context: Ctx) -> Any:
        async with self.store.read() as session:
            runs, token = await training_runs.listing(
                session, request.parent, names.page_size(request.page_size), request.page_token
            )
        return tpb.ListTrainingRunsResponse(runs=runs, next_page_token=token)

    @abort_on_error
    async def ClaimTrainingRun(self, request: tpb.ClaimTrainingRunRequest, context: Ctx) -> Any:
        lease = _lease(request)
        if not request.trainer:
            raise InvalidArgument("trainer must name the claiming trainer, e.g. trainers/t1")
        async with self.store.read() as session:  # most polls find nothing: no write then
            waiting = await training_runs.any_queued(session)
        if not waiting:
            return tpb.ClaimTrainingRunResponse()
        async with self.store.write(actor()) as tx:
            claimed = await training_runs.claim(tx, request.trainer, lease)
        if claimed is None:
            return tpb.ClaimTrainingRunResponse()
        run, policy = claimed
        return tpb.ClaimTrainingRunResponse(run=run, policy=policy)

    @abort_on_error
    async def UpdateTrainingRun(self, request: tpb.UpdateTrainingRunRequest, context: Ctx) -> Any:
        lease = _lease(request) if request.run.state == training_runs.RUNNING else 0.0
        async with self.store.write(actor()) as tx:
            run = await training_runs.update(tx, request.run, lease, self.alerts)
        return tpb.UpdateTrainingRunResponse(run=run)

    @abort_on_error
    async def ClaimLearner(self, request: tpb.ClaimLearnerRequest, context: Ctx) -> Any:
        lease = _lease(request)
        async with self.store.read() as session:  # a learner held elsewhere: no write
            held = await learners.held_elsewhere(session, request.parent, request.learner)
        if held is not None:
            return tpb.ClaimLearnerResponse(granted=False, status=held)
        async with self.store.write(actor()) as tx:
            granted, row, status = await learners.claim(tx, request.parent, request.learner, lease)
        if not granted or row is None:
            return tpb.ClaimLearnerResponse(granted=False, status=status)
        return tpb.ClaimLearnerResponse(
            granted=True, fencing_token=row.token, checkpoint=row.checkpoint, status=status
        )

    @abort_on_error
    async def CommitLearnerCheckpoint(
        self, request: tpb.CommitLearnerCheckpointRequest, context: Ctx
    ) -> Any:
        lease = _lease(request)
        async with self.store.write(actor()) as tx:  # fenced, and it may raise alerts
            status = await learners.commit(tx, request, lease, self.alerts)
        return tpb.CommitLearnerCheckpointResponse(status=status)

    @abort_on_error
    async def PublishOnlineVersion(
        self, request: tpb.PublishOnlineVersionRequest, context: Ctx
    ) -> Any:
        async with self.store.write(actor()) as tx:
            decision, archived, status = await learners.publish(tx, request, self.artifacts)
        return tpb.PublishOnlineVersionResponse(decision=decision, archived=archived, status=status)

    @abort_on_error
    async def GetLearnerStatus(self, request: tpb.GetLearnerStatusRequest, context: Ctx) -> Any:
        async with self.store.read() as session:
            status = await learners.status_of(session, request.parent)
        return tpb.GetLearnerStatusResponse(status=status)
