"""The catalogue: models, their versions (numbered without races) and aliases.

Functions take a read session or a write transaction (`Tx`); writes record a
change-feed event and an audit event in the same transaction.
"""

from __future__ import annotations

from google.protobuf.field_mask_pb2 import FieldMask
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.common import onnxsig
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.registry import names
from services.registry.db import ModelRow, RolloutRow, VersionRow
from services.registry.names import page
from services.registry.store import Tx, now_us

MODEL_MUTABLE = {"description", "labels", "prediction_log_rate"}
VERSION_MUTABLE = {"description", "tags", "metrics", "stage", "reference_statistics"}


def model_proto(row: ModelRow) -> rpb.Model:
    return rpb.Model.FromString(row.proto)


def version_proto(row: VersionRow) -> rpb.Version:
    return rpb.Version.FromString(row.proto)


async def model_row(session: AsyncSession, model_id: str, *, lock: bool = False) -> ModelRow:
    query = select(ModelRow).where(ModelRow.name == model_id)
    if lock:
        query = query.with_for_update()
    row = (await session.execute(query)).scalar_one_or_none()
    if row is None:
        raise NotFound(f"model '{model_id}' not found")
    return row


async def create_model(tx: Tx, model_id: str, model: rpb.Model) -> rpb.Model:
    names.check_id("model", model_id)
    existing = (
        await tx.session.execute(select(ModelRow.id).where(ModelRow.name == model_id))
    ).first()
    if existing is not None:
        raise AlreadyExists(f"model '{model_id}' already exists")
    created = rpb.Model()
    created.CopyFrom(model)
    created.name = f"models/{model_id}"
    created.latest_version = 0
    created.aliases.clear()
    if created.HasField("prediction_log_rate") and not 0 <= created.prediction_log_rate <= 1:
        raise InvalidArgument("prediction_log_rate must be between 0 and 1")
    created.create_time.FromMicroseconds(now_us())
    created.update_time.CopyFrom(created.create_time)
    tx.session.add(ModelRow(name=model_id, latest_version=0, proto=created.SerializeToString()))
    await tx.session.flush()
    tx.put(created, created.name)
    await tx.audit("CreateModel", created.name, None, created)
    return created


def _check_mask(mask: FieldMask, allowed: set[str], kind: str) -> list[str]:
    paths = list(mask.paths)
    if not paths:
        raise InvalidArgument(f"update_mask is empty: name the {kind} fields to change")
    bad = sorted(set(paths) - allowed)
    if bad:
        raise InvalidArgument(
            f"cannot update {kind} field(s) {', '.join(bad)}; "
            f"updatable: {', '.join(sorted(allowed))}"
        )
    return paths


async def update_model(tx: Tx, model: rpb.Model, mask: FieldMask) -> rpb.Model:
    paths = _check_mask(mask, MODEL_MUTABLE, "model")
    row = await model_row(tx.session, names.model(model.name), lock=True)
    before = model_proto(row)
    after = rpb.Model()
    after.CopyFrom(before)
    for path in paths:
        after.ClearField(path)
        if path == "labels":
            after.labels.update(model.labels)
        elif path == "prediction_log_rate":
            if model.HasField(path):  # absent in `model`: back to each gateway's default
                if not 0 <= model.prediction_log_rate <= 1:
                    raise InvalidArgument("prediction_log_rate must be between 0 and 1")
                after.prediction_log_rate = model.prediction_log_rate
        else:
            setattr(after, path, getattr(model, path))
    after.update_time.FromMicroseconds(now_us())
    row.proto = after.SerializeToString()
    tx.put(after, after.name)
    await tx.audit("UpdateModel", after.name, before, after, {"paths": paths})
    return after


async def delete_model(tx: Tx, name: str) -> None:
    row = await model_row(tx.session, names.model(name), lock=True)
    rollout = await tx.session.get(RolloutRow, row.id)
    if rollout is not None and rpb.Rollout.FromString(rollout.proto).targets:
        raise FailedPrecondition(
            f"model '{row.name}' still has a rollout serving traffic; clear its rollout first"
        )
    before = model_proto(row)
    await tx.session.delete(row)
    tx.delete("model", before.name)
    await tx.audit("DeleteModel", before.name, before, None)


async def check_signature(
    session: AsyncSession, model_id: str, signature: onnxsig.Signature
) -> ModelRow:
    """The model's row, if `signature` fits the model's registered one (or it has none yet)."""
    row = await model_row(session, model_id)
    model = model_proto(row)
    if model.signature.inputs or model.signature.outputs:
        why = onnxsig.mismatch(onnxsig.from_proto(model.signature), signature)
        if why is not None:
            raise InvalidArgument(f"artifact signature does not match model '{model_id}': {why}")
    return row


async def create_version(
    tx: Tx,
    model_id: str,
    requested: rpb.Version,
    artifact: rpb.Artifact,
    signature: onnxsig.Signature,
) -> rpb.Version:
    """Register a version whose artifact is already stored; allocate its number."""
    row = await check_signature(tx.session, model_id, signature)
    # The row lock this UPDATE takes serialises concurrent registrations of one model,
    # and a failed transaction rolls the counter back, so numbers have no gaps.
    number = (
        await tx.session.execute(
            update(ModelRow)
            .where(ModelRow.id == row.id)
            .values(latest_version=ModelRow.latest_version + 1)
            .returning(ModelRow.latest_version)
        )
    ).scalar_one()
    version = rpb.Version()
    version.CopyFrom(requested)
    version.name = names.version_name(model_id, number)
    version.number = number
    version.artifact.CopyFrom(artifact)
    version.signature.CopyFrom(onnxsig.to_proto(signature))
    version.stage = rpb.STAGE_NONE
    version.approval.Clear()
    version.approval.state = rpb.APPROVAL_STATE_PENDING
    version.creator = tx.actor
    version.create_time.FromMicroseconds(now_us())
    version.update_time.CopyFrom(version.create_time)
    tx.session.add(
        VersionRow(
            model_id=row.id,
            number=number,
            sha256=artifact.sha256,
            stage=version.stage,
            approval=version.approval.state,
            proto=version.SerializeToString(),
        )
    )
    await tx.session.refresh(row)
    model = model_proto(row)
    model.latest_version = number
    if not (model.signature.inputs or model.signature.outputs):
        model.signature.CopyFrom(version.signature)
    model.update_time.CopyFrom(version.create_time)
    row.proto = model.SerializeToString()
    tx.put(version, version.name)
    tx.put(model, model.name)
    await tx.audit(
        "CreateVersion",
        version.name,
        None,
        version,
        {"sha256": artifact.sha256, "size_bytes": artifact.size_bytes},
    )
    return version


async def version_row(
    session: AsyncSession, name: str, *, lock: bool = False
) -> tuple[ModelRow, VersionRow]:
    model_id, ref = names.version(name)
    model = await model_row(session, model_id)
    number = ref
    if isinstance(ref, str):
        aliases = model_proto(model).aliases
        if ref not in aliases:
            raise NotFound(f"model '{model_id}' has no alias '{ref}'")
        number = aliases[ref]
    query = select(VersionRow).where(VersionRow.model_id == model.id, VersionRow.number == number)
    if lock:
        query = query.with_for_update()
    row = (await session.execute(query)).scalar_one_or_none()
    if row is None:
        raise NotFound(f"model '{model_id}' has no version {number}")
    return model, row


async def list_versions(
    session: AsyncSession, parent: str, size: int, page_token: str
) -> tuple[list[rpb.Version], str]:
    model = await model_row(session, names.model(parent))
    query = select(VersionRow).where(VersionRow.model_id == model.id)
    if page_token:
        query = query.where(VersionRow.number < names.decode_page_number(page_token))
    rows, token = await page(
        session, query.order_by(VersionRow.number.desc()), size, lambda r: int(r.number)
    )
    return [version_proto(r) for r in rows], token


async def update_version(tx: Tx, version: rpb.Version, mask: FieldMask) -> rpb.Version:
    paths = _check_mask(mask, VERSION_MUTABLE, "version")
    _, row = await version_row(tx.session, version.name, lock=True)
    before = version_proto(row)
    after = rpb.Version()
    after.CopyFrom(before)
    for path in paths:
        if path == "stage" and version.stage == rpb.STAGE_UNSPECIFIED:
            raise InvalidArgument("stage must be one of NONE, STAGING, PRODUCTION, ARCHIVED")
        after.ClearField(path)
        source = getattr(version, path)
        if path in ("tags", "metrics"):
            getattr(after, path).update(source)
        elif path == "reference_statistics":
            after.reference_statistics.CopyFrom(source)
        else:
            setattr(after, path, source)
    after.update_time.FromMicroseconds(now_us())
    row.stage = after.stage
    row.proto = after.SerializeToString()
    tx.put(after, after.name)
    await tx.audit("UpdateVersion", after.name, before, after, {"paths": paths})
    return after


async def review_version(tx: Tx, name: str, decision: int, reason: str) -> rpb.Version:
    if decision not in (rpb.APPROVAL_STATE_APPROVED, rpb.APPROVAL_STATE_REJECTED):
        raise InvalidArgument("decision must be APPROVAL_STATE_APPROVED or APPROVAL_STATE_REJECTED")
    model, row = await version_row(tx.session, name, lock=True)
    before = version_proto(row)
    if decision == rpb.APPROVAL_STATE_REJECTED:
        rollout = await tx.session.get(RolloutRow, model.id)
        if rollout is not None:
            served = rpb.Rollout.FromString(rollout.proto)
            if any(t.version == before.number for t in served.targets):
                raise FailedPrecondition(
                    f"version {before.number} of '{model.name}' serves traffic; "
                    "move the rollout off it before rejecting it"
                )
    after = rpb.Version()
    after.CopyFrom(before)
    after.approval.state = decision
    after.approval.actor = tx.actor
    after.approval.reason = reason
    after.approval.time.FromMicroseconds(now_us())
    after.update_time.CopyFrom(after.approval.time)
    row.approval = decision
    row.proto = after.SerializeToString()
    tx.put(after, after.name)
    await tx.audit(
        "ReviewVersion",
        after.name,
        before,
        after,
        {"decision": rpb.ApprovalState.Name(decision), "reason": reason},
    )
    return after


async def set_alias(tx: Tx, parent: str, alias: str, number: int) -> rpb.Model:
    names.check_id("alias", alias)
    row = await model_row(tx.session, names.model(parent), lock=True)
    await version_row(tx.session, names.version_name(row.name, number))
    before = model_proto(row)
    after = rpb.Model()
    after.CopyFrom(before)
    after.aliases[alias] = number
    after.update_time.FromMicroseconds(now_us())
    row.proto = after.SerializeToString()
    tx.put(after, after.name)
    await tx.audit("SetAlias", f"{after.name}/aliases/{alias}", before, after, {"version": number})
    return after


async def delete_alias(tx: Tx, parent: str, alias: str) -> rpb.Model:
    row = await model_row(tx.session, names.model(parent), lock=True)
    before = model_proto(row)
    if alias not in before.aliases:
        raise NotFound(f"model '{row.name}' has no alias '{alias}'")
    after = rpb.Model()
    after.CopyFrom(before)
    del after.aliases[alias]
    after.update_time.FromMicroseconds(now_us())
    row.proto = after.SerializeToString()
    tx.put(after, after.name)
    await tx.audit("DeleteAlias", f"{after.name}/aliases/{alias}", before, after)
    return after
