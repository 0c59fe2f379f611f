import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from services.common.gen.liveml.events.v1 import events_pb2 as _events_pb2
from services.common.gen.liveml.gateway.v1 import gateway_pb2 as _gateway_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_UNSPECIFIED: _ClassVar[Stage]
    STAGE_NONE: _ClassVar[Stage]
    STAGE_STAGING: _ClassVar[Stage]
    STAGE_PRODUCTION: _ClassVar[Stage]
    STAGE_ARCHIVED: _ClassVar[Stage]

class ApprovalState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    APPROVAL_STATE_UNSPECIFIED: _ClassVar[ApprovalState]
    APPROVAL_STATE_PENDING: _ClassVar[ApprovalState]
    APPROVAL_STATE_APPROVED: _ClassVar[ApprovalState]
    APPROVAL_STATE_REJECTED: _ClassVar[ApprovalState]

class ArtifactFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ARTIFACT_FORMAT_UNSPECIFIED: _ClassVar[ArtifactFormat]
    ARTIFACT_FORMAT_ONNX: _ClassVar[ArtifactFormat]

class VersionLoadState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERSION_LOAD_STATE_UNSPECIFIED: _ClassVar[VersionLoadState]
    VERSION_LOAD_STATE_LOADING: _ClassVar[VersionLoadState]
    VERSION_LOAD_STATE_READY: _ClassVar[VersionLoadState]
    VERSION_LOAD_STATE_FAILED: _ClassVar[VersionLoadState]
    VERSION_LOAD_STATE_DRAINING: _ClassVar[VersionLoadState]

class WorkerRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKER_ROLE_UNSPECIFIED: _ClassVar[WorkerRole]
    WORKER_ROLE_ALL: _ClassVar[WorkerRole]
    WORKER_ROLE_PRIMARY: _ClassVar[WorkerRole]
    WORKER_ROLE_MIRROR: _ClassVar[WorkerRole]

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_ADMIN: _ClassVar[Role]
    ROLE_DEPLOYER: _ClassVar[Role]
    ROLE_PUBLISHER: _ClassVar[Role]
    ROLE_VIEWER: _ClassVar[Role]
    ROLE_WORKER: _ClassVar[Role]
    ROLE_CLIENT: _ClassVar[Role]
    ROLE_INGEST: _ClassVar[Role]
    ROLE_GATEWAY: _ClassVar[Role]
    ROLE_TRAINER: _ClassVar[Role]

class WindowSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WINDOW_SOURCE_UNSPECIFIED: _ClassVar[WindowSource]
    WINDOW_SOURCE_GATEWAY: _ClassVar[WindowSource]
    WINDOW_SOURCE_WORKER: _ClassVar[WindowSource]
    WINDOW_SOURCE_JOINER: _ClassVar[WindowSource]
STAGE_UNSPECIFIED: Stage
STAGE_NONE: Stage
STAGE_STAGING: Stage
STAGE_PRODUCTION: Stage
STAGE_ARCHIVED: Stage
APPROVAL_STATE_UNSPECIFIED: ApprovalState
APPROVAL_STATE_PENDING: ApprovalState
APPROVAL_STATE_APPROVED: ApprovalState
APPROVAL_STATE_REJECTED: ApprovalState
ARTIFACT_FORMAT_UNSPECIFIED: ArtifactFormat
ARTIFACT_FORMAT_ONNX: ArtifactFormat
VERSION_LOAD_STATE_UNSPECIFIED: VersionLoadState
VERSION_LOAD_STATE_LOADING: VersionLoadState
VERSION_LOAD_STATE_READY: VersionLoadState
VERSION_LOAD_STATE_FAILED: VersionLoadState
VERSION_LOAD_STATE_DRAINING: VersionLoadState
WORKER_ROLE_UNSPECIFIED: WorkerRole
WORKER_ROLE_ALL: WorkerRole
WORKER_ROLE_PRIMARY: WorkerRole
WORKER_ROLE_MIRROR: WorkerRole
ROLE_UNSPECIFIED: Role
ROLE_ADMIN: Role
ROLE_DEPLOYER: Role
ROLE_PUBLISHER: Role
ROLE_VIEWER: Role
ROLE_WORKER: Role
ROLE_CLIENT: Role
ROLE_INGEST: Role
ROLE_GATEWAY: Role
ROLE_TRAINER: Role
WINDOW_SOURCE_UNSPECIFIED: WindowSource
WINDOW_SOURCE_GATEWAY: WindowSource
WINDOW_SOURCE_WORKER: WindowSource
WINDOW_SOURCE_JOINER: WindowSource

class TensorSpec(_message.Message):
    __slots__ = ("name", "datatype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class Signature(_message.Message):
    __slots__ = ("inputs", "outputs")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    def __init__(self, inputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("name", "description", "signature", "labels", "aliases", "latest_version", "create_time", "update_time", "prediction_log_rate")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class AliasesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_LOG_RATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    signature: Signature
    labels: _containers.ScalarMap[str, str]
    aliases: _containers.ScalarMap[str, int]
    latest_version: int
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    prediction_log_rate: float
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., signature: _Optional[_Union[Signature, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., aliases: _Optional[_Mapping[str, int]] = ..., latest_version: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., prediction_log_rate: _Optional[float] = ...) -> None: ...

class Approval(_message.Message):
    __slots__ = ("state", "actor", "reason", "time")
    STATE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    state: ApprovalState
    actor: str
    reason: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, state: _Optional[_Union[ApprovalState, str]] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Artifact(_message.Message):
    __slots__ = ("sha256", "size_bytes", "format", "key_id")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size_bytes: int
    format: ArtifactFormat
    key_id: str
    def __init__(self, sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., format: _Optional[_Union[ArtifactFormat, str]] = ..., key_id: _Optional[str] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ("uri", "digest", "rows")
    URI_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    uri: str
    digest: str
    rows: int
    def __init__(self, uri: _Optional[str] = ..., digest: _Optional[str] = ..., rows: _Optional[int] = ...) -> None: ...

class Lineage(_message.Message):
    __slots__ = ("parent_version", "pipeline_run")
    PARENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_RUN_FIELD_NUMBER: _ClassVar[int]
    parent_version: int
    pipeline_run: str
    def __init__(self, parent_version: _Optional[int] = ..., pipeline_run: _Optional[str] = ...) -> None: ...

class FeatureStatistics(_message.Message):
    __slots__ = ("name", "bin_edges", "bin_fractions", "mean", "std")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BIN_EDGES_FIELD_NUMBER: _ClassVar[int]
    BIN_FRACTIONS_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    name: str
    bin_edges: _containers.RepeatedScalarFieldContainer[float]
    bin_fractions: _containers.RepeatedScalarFieldContainer[float]
    mean: float
    std: float
    def __init__(self, name: _Optional[str] = ..., bin_edges: _Optional[_Iterable[float]] = ..., bin_fractions: _Optional[_Iterable[float]] = ..., mean: _Optional[float] = ..., std: _Optional[float] = ...) -> None: ...

class ReferenceStatistics(_message.Message):
    __slots__ = ("inputs", "outputs")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[FeatureStatistics]
    outputs: _containers.RepeatedCompositeFieldContainer[FeatureStatistics]
    def __init__(self, inputs: _Optional[_Iterable[_Union[FeatureStatistics, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[FeatureStatistics, _Mapping]]] = ...) -> None: ...

class BatchingConfig(_message.Message):
    __slots__ = ("max_batch_size", "max_queue_delay")
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_DELAY_FIELD_NUMBER: _ClassVar[int]
    max_batch_size: int
    max_queue_delay: _duration_pb2.Duration
    def __init__(self, max_batch_size: _Optional[int] = ..., max_queue_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Version(_message.Message):
    __slots__ = ("name", "number", "description", "artifact", "signature", "dataset", "params", "metrics", "reference_statistics", "lineage", "tags", "stage", "approval", "batching", "creator", "create_time", "update_time")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_STATISTICS_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    BATCHING_FIELD_NUMBER: _ClassVar[int]
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    number: int
    description: str
    artifact: Artifact
    signature: Signature
    dataset: Dataset
    params: _containers.ScalarMap[str, str]
    metrics: _containers.ScalarMap[str, float]
    reference_statistics: ReferenceStatistics
    lineage: Lineage
    tags: _containers.ScalarMap[str, str]
    stage: Stage
    approval: Approval
    batching: BatchingConfig
    creator: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., number: _Optional[int] = ..., description: _Optional[str] = ..., artifact: _Optional[_Union[Artifact, _Mapping]] = ..., signature: _Optional[_Union[Signature, _Mapping]] = ..., dataset: _Optional[_Union[Dataset, _Mapping]] = ..., params: _Optional[_Mapping[str, str]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., reference_statistics: _Optional[_Union[ReferenceStatistics, _Mapping]] = ..., lineage: _Optional[_Union[Lineage, _Mapping]] = ..., tags: _Optional[_Mapping[str, str]] = ..., stage: _Optional[_Union[Stage, str]] = ..., approval: _Optional[_Union[Approval, _Mapping]] = ..., batching: _Optional[_Union[BatchingConfig, _Mapping]] = ..., creator: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TrafficTarget(_message.Message):
    __slots__ = ("version", "percent")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    version: int
    percent: int
    def __init__(self, version: _Optional[int] = ..., percent: _Optional[int] = ...) -> None: ...

class AnalysisPolicy(_message.Message):
    __slots__ = ("steps", "step_interval", "min_requests", "max_error_rate_delta", "max_p99_latency_ratio", "max_accuracy_drop", "max_drift_psi", "max_fairness_gap", "ready_timeout", "max_idle_intervals", "candidate_version", "min_feedback")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    STEP_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_ERROR_RATE_DELTA_FIELD_NUMBER: _ClassVar[int]
    MAX_P99_LATENCY_RATIO_FIELD_NUMBER: _ClassVar[int]
    MAX_ACCURACY_DROP_FIELD_NUMBER: _ClassVar[int]
    MAX_DRIFT_PSI_FIELD_NUMBER: _ClassVar[int]
    MAX_FAIRNESS_GAP_FIELD_NUMBER: _ClassVar[int]
    READY_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    MAX_IDLE_INTERVALS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MIN_FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    steps: _containers.RepeatedScalarFieldContainer[int]
    step_interval: _duration_pb2.Duration
    min_requests: int
    max_error_rate_delta: float
    max_p99_latency_ratio: float
    max_accuracy_drop: float
    max_drift_psi: float
    max_fairness_gap: float
    ready_timeout: _duration_pb2.Duration
    max_idle_intervals: int
    candidate_version: int
    min_feedback: int
    def __init__(self, steps: _Optional[_Iterable[int]] = ..., step_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., min_requests: _Optional[int] = ..., max_error_rate_delta: _Optional[float] = ..., max_p99_latency_ratio: _Optional[float] = ..., max_accuracy_drop: _Optional[float] = ..., max_drift_psi: _Optional[float] = ..., max_fairness_gap: _Optional[float] = ..., ready_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_idle_intervals: _Optional[int] = ..., candidate_version: _Optional[int] = ..., min_feedback: _Optional[int] = ...) -> None: ...

class AnalysisStatus(_message.Message):
    __slots__ = ("phase", "stable_version", "candidate_version", "step_index", "start_time", "step_start_time", "idle_intervals", "last_decision", "last_decision_time")
    class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        PHASE_UNSPECIFIED: _ClassVar[AnalysisStatus.Phase]
        PHASE_PROGRESSING: _ClassVar[AnalysisStatus.Phase]
        PHASE_PAUSED: _ClassVar[AnalysisStatus.Phase]
        PHASE_PROMOTED: _ClassVar[AnalysisStatus.Phase]
        PHASE_ROLLED_BACK: _ClassVar[AnalysisStatus.Phase]
        PHASE_ABORTED: _ClassVar[AnalysisStatus.Phase]
    PHASE_UNSPECIFIED: AnalysisStatus.Phase
    PHASE_PROGRESSING: AnalysisStatus.Phase
    PHASE_PAUSED: AnalysisStatus.Phase
    PHASE_PROMOTED: AnalysisStatus.Phase
    PHASE_ROLLED_BACK: AnalysisStatus.Phase
    PHASE_ABORTED: AnalysisStatus.Phase
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STABLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    STEP_INDEX_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    STEP_START_TIME_FIELD_NUMBER: _ClassVar[int]
    IDLE_INTERVALS_FIELD_NUMBER: _ClassVar[int]
    LAST_DECISION_FIELD_NUMBER: _ClassVar[int]
    LAST_DECISION_TIME_FIELD_NUMBER: _ClassVar[int]
    phase: AnalysisStatus.Phase
    stable_version: int
    candidate_version: int
    step_index: int
    start_time: _timestamp_pb2.Timestamp
    step_start_time: _timestamp_pb2.Timestamp
    idle_intervals: int
    last_decision: str
    last_decision_time: _timestamp_pb2.Timestamp
    def __init__(self, phase: _Optional[_Union[AnalysisStatus.Phase, str]] = ..., stable_version: _Optional[int] = ..., candidate_version: _Optional[int] = ..., step_index: _Optional[int] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., step_start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., idle_intervals: _Optional[int] = ..., last_decision: _Optional[str] = ..., last_decision_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Rollout(_message.Message):
    __slots__ = ("name", "targets", "mirrors", "pinned", "sticky_key", "analysis", "revision", "updater", "update_time", "status", "fallback")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    MIRRORS_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    STICKY_KEY_FIELD_NUMBER: _ClassVar[int]
    ANALYSIS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    UPDATER_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    name: str
    targets: _containers.RepeatedCompositeFieldContainer[TrafficTarget]
    mirrors: _containers.RepeatedCompositeFieldContainer[TrafficTarget]
    pinned: _containers.RepeatedScalarFieldContainer[int]
    sticky_key: str
    analysis: AnalysisPolicy
    revision: int
    updater: str
    update_time: _timestamp_pb2.Timestamp
    status: AnalysisStatus
    fallback: _containers.RepeatedCompositeFieldContainer[ServingShare]
    def __init__(self, name: _Optional[str] = ..., targets: _Optional[_Iterable[_Union[TrafficTarget, _Mapping]]] = ..., mirrors: _Optional[_Iterable[_Union[TrafficTarget, _Mapping]]] = ..., pinned: _Optional[_Iterable[int]] = ..., sticky_key: _Optional[str] = ..., analysis: _Optional[_Union[AnalysisPolicy, _Mapping]] = ..., revision: _Optional[int] = ..., updater: _Optional[str] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., status: _Optional[_Union[AnalysisStatus, _Mapping]] = ..., fallback: _Optional[_Iterable[_Union[ServingShare, _Mapping]]] = ...) -> None: ...

class WorkerVersionState(_message.Message):
    __slots__ = ("model", "version", "state", "error", "update_time")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    state: VersionLoadState
    error: str
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., state: _Optional[_Union[VersionLoadState, str]] = ..., error: _Optional[str] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Worker(_message.Message):
    __slots__ = ("name", "address", "models", "capacity", "versions", "lease_expire_time", "labels", "forward_address", "role", "observed_revision")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    FORWARD_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_REVISION_FIELD_NUMBER: _ClassVar[int]
    name: str
    address: str
    models: _containers.RepeatedScalarFieldContainer[str]
    capacity: int
    versions: _containers.RepeatedCompositeFieldContainer[WorkerVersionState]
    lease_expire_time: _timestamp_pb2.Timestamp
    labels: _containers.ScalarMap[str, str]
    forward_address: str
    role: WorkerRole
    observed_revision: int
    def __init__(self, name: _Optional[str] = ..., address: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., capacity: _Optional[int] = ..., versions: _Optional[_Iterable[_Union[WorkerVersionState, _Mapping]]] = ..., lease_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., forward_address: _Optional[str] = ..., role: _Optional[_Union[WorkerRole, str]] = ..., observed_revision: _Optional[int] = ...) -> None: ...

class Token(_message.Message):
    __slots__ = ("name", "display_name", "role", "create_time", "expire_time", "revoked", "creator", "worker_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    display_name: str
    role: Role
    create_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    revoked: bool
    creator: str
    worker_id: str
    def __init__(self, name: _Optional[str] = ..., display_name: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked: _Optional[bool] = ..., creator: _Optional[str] = ..., worker_id: _Optional[str] = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("sequence", "time", "actor", "action", "target", "before_digest", "after_digest", "details", "previous_hash", "hash", "key_id")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    BEFORE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    AFTER_DIGEST_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_HASH_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    time: _timestamp_pb2.Timestamp
    actor: str
    action: str
    target: str
    before_digest: str
    after_digest: str
    details: str
    previous_hash: str
    hash: str
    key_id: str
    def __init__(self, sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., target: _Optional[str] = ..., before_digest: _Optional[str] = ..., after_digest: _Optional[str] = ..., details: _Optional[str] = ..., previous_hash: _Optional[str] = ..., hash: _Optional[str] = ..., key_id: _Optional[str] = ...) -> None: ...

class CreateModelRequest(_message.Message):
    __slots__ = ("model_id", "model")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    model: Model
    def __init__(self, model_id: _Optional[str] = ..., model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...

class CreateModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: Model
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: Model
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "next_page_token")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    next_page_token: str
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateModelRequest(_message.Message):
    __slots__ = ("model", "update_mask")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    model: Model
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class UpdateModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: Model
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...

class DeleteModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteModelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateVersionRequest(_message.Message):
    __slots__ = ("metadata", "chunk")
    class Metadata(_message.Message):
        __slots__ = ("parent", "version", "sha256", "size_bytes", "format")
        PARENT_FIELD_NUMBER: _ClassVar[int]
        VERSION_FIELD_NUMBER: _ClassVar[int]
        SHA256_FIELD_NUMBER: _ClassVar[int]
        SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
        FORMAT_FIELD_NUMBER: _ClassVar[int]
        parent: str
        version: Version
        sha256: str
        size_bytes: int
        format: ArtifactFormat
        def __init__(self, parent: _Optional[str] = ..., version: _Optional[_Union[Version, _Mapping]] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., format: _Optional[_Union[ArtifactFormat, str]] = ...) -> None: ...
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    metadata: CreateVersionRequest.Metadata
    chunk: bytes
    def __init__(self, metadata: _Optional[_Union[CreateVersionRequest.Metadata, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class CreateVersionResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: Version
    def __init__(self, version: _Optional[_Union[Version, _Mapping]] = ...) -> None: ...

class GetVersionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetVersionResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: Version
    def __init__(self, version: _Optional[_Union[Version, _Mapping]] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListVersionsResponse(_message.Message):
    __slots__ = ("versions", "next_page_token")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[Version]
    next_page_token: str
    def __init__(self, versions: _Optional[_Iterable[_Union[Version, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateVersionRequest(_message.Message):
    __slots__ = ("version", "update_mask")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    version: Version
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, version: _Optional[_Union[Version, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class UpdateVersionResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: Version
    def __init__(self, version: _Optional[_Union[Version, _Mapping]] = ...) -> None: ...

class ReviewVersionRequest(_message.Message):
    __slots__ = ("name", "decision", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    decision: ApprovalState
    reason: str
    def __init__(self, name: _Optional[str] = ..., decision: _Optional[_Union[ApprovalState, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class ReviewVersionResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: Version
    def __init__(self, version: _Optional[_Union[Version, _Mapping]] = ...) -> None: ...

class DownloadArtifactRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DownloadArtifactResponse(_message.Message):
    __slots__ = ("artifact", "chunk")
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    artifact: Artifact
    chunk: bytes
    def __init__(self, artifact: _Optional[_Union[Artifact, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class SetAliasRequest(_message.Message):
    __slots__ = ("parent", "alias", "version")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    parent: str
    alias: str
    version: int
    def __init__(self, parent: _Optional[str] = ..., alias: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class SetAliasResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: Model
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...

class DeleteAliasRequest(_message.Message):
    __slots__ = ("parent", "alias")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    parent: str
    alias: str
    def __init__(self, parent: _Optional[str] = ..., alias: _Optional[str] = ...) -> None: ...

class DeleteAliasResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: Model
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...

class GetRolloutRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetRolloutResponse(_message.Message):
    __slots__ = ("rollout", "serving", "held")
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    rollout: Rollout
    serving: _containers.RepeatedCompositeFieldContainer[ServingShare]
    held: _containers.RepeatedCompositeFieldContainer[HeldShare]
    def __init__(self, rollout: _Optional[_Union[Rollout, _Mapping]] = ..., serving: _Optional[_Iterable[_Union[ServingShare, _Mapping]]] = ..., held: _Optional[_Iterable[_Union[HeldShare, _Mapping]]] = ...) -> None: ...

class ServingShare(_message.Message):
    __slots__ = ("version", "percent")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    version: int
    percent: float
    def __init__(self, version: _Optional[int] = ..., percent: _Optional[float] = ...) -> None: ...

class HeldShare(_message.Message):
    __slots__ = ("version", "percent", "reason", "held_on")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HELD_ON_FIELD_NUMBER: _ClassVar[int]
    version: int
    percent: int
    reason: str
    held_on: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, version: _Optional[int] = ..., percent: _Optional[int] = ..., reason: _Optional[str] = ..., held_on: _Optional[_Iterable[int]] = ...) -> None: ...

class UpdateRolloutRequest(_message.Message):
    __slots__ = ("rollout", "expected_revision", "force")
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    rollout: Rollout
    expected_revision: int
    force: bool
    def __init__(self, rollout: _Optional[_Union[Rollout, _Mapping]] = ..., expected_revision: _Optional[int] = ..., force: _Optional[bool] = ...) -> None: ...

class UpdateRolloutResponse(_message.Message):
    __slots__ = ("rollout",)
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    rollout: Rollout
    def __init__(self, rollout: _Optional[_Union[Rollout, _Mapping]] = ...) -> None: ...

class ListRolloutHistoryRequest(_message.Message):
    __slots__ = ("name", "page_size", "page_token")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    page_size: int
    page_token: str
    def __init__(self, name: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRolloutHistoryResponse(_message.Message):
    __slots__ = ("rollouts", "next_page_token")
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    rollouts: _containers.RepeatedCompositeFieldContainer[Rollout]
    next_page_token: str
    def __init__(self, rollouts: _Optional[_Iterable[_Union[Rollout, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RollbackRolloutRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RollbackRolloutResponse(_message.Message):
    __slots__ = ("rollout",)
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    rollout: Rollout
    def __init__(self, rollout: _Optional[_Union[Rollout, _Mapping]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("since_revision", "progress_interval", "models", "kinds")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[WatchRequest.Kind]
        KIND_MODEL: _ClassVar[WatchRequest.Kind]
        KIND_VERSION: _ClassVar[WatchRequest.Kind]
        KIND_ROLLOUT: _ClassVar[WatchRequest.Kind]
        KIND_WORKER: _ClassVar[WatchRequest.Kind]
        KIND_CREDENTIAL: _ClassVar[WatchRequest.Kind]
    KIND_UNSPECIFIED: WatchRequest.Kind
    KIND_MODEL: WatchRequest.Kind
    KIND_VERSION: WatchRequest.Kind
    KIND_ROLLOUT: WatchRequest.Kind
    KIND_WORKER: WatchRequest.Kind
    KIND_CREDENTIAL: WatchRequest.Kind
    SINCE_REVISION_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    since_revision: int
    progress_interval: _duration_pb2.Duration
    models: _containers.RepeatedScalarFieldContainer[str]
    kinds: _containers.RepeatedScalarFieldContainer[WatchRequest.Kind]
    def __init__(self, since_revision: _Optional[int] = ..., progress_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., models: _Optional[_Iterable[str]] = ..., kinds: _Optional[_Iterable[_Union[WatchRequest.Kind, str]]] = ...) -> None: ...

class WatchEvent(_message.Message):
    __slots__ = ("revision", "type", "rollout", "version", "worker", "model", "credential", "resource_name")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TYPE_UNSPECIFIED: _ClassVar[WatchEvent.Type]
        TYPE_PUT: _ClassVar[WatchEvent.Type]
        TYPE_DELETE: _ClassVar[WatchEvent.Type]
    TYPE_UNSPECIFIED: WatchEvent.Type
    TYPE_PUT: WatchEvent.Type
    TYPE_DELETE: WatchEvent.Type
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_NAME_FIELD_NUMBER: _ClassVar[int]
    revision: int
    type: WatchEvent.Type
    rollout: Rollout
    version: Version
    worker: Worker
    model: Model
    credential: Credential
    resource_name: str
    def __init__(self, revision: _Optional[int] = ..., type: _Optional[_Union[WatchEvent.Type, str]] = ..., rollout: _Optional[_Union[Rollout, _Mapping]] = ..., version: _Optional[_Union[Version, _Mapping]] = ..., worker: _Optional[_Union[Worker, _Mapping]] = ..., model: _Optional[_Union[Model, _Mapping]] = ..., credential: _Optional[_Union[Credential, _Mapping]] = ..., resource_name: _Optional[str] = ...) -> None: ...

class Credential(_message.Message):
    __slots__ = ("name", "display_name", "role", "secret_sha256", "expire_time", "revoked")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SECRET_SHA256_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    name: str
    display_name: str
    role: Role
    secret_sha256: str
    expire_time: _timestamp_pb2.Timestamp
    revoked: bool
    def __init__(self, name: _Optional[str] = ..., display_name: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., secret_sha256: _Optional[str] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked: _Optional[bool] = ...) -> None: ...

class WatchResponse(_message.Message):
    __slots__ = ("kind", "revision", "events", "snapshot_complete")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[WatchResponse.Kind]
        KIND_SNAPSHOT: _ClassVar[WatchResponse.Kind]
        KIND_EVENTS: _ClassVar[WatchResponse.Kind]
        KIND_PROGRESS: _ClassVar[WatchResponse.Kind]
    KIND_UNSPECIFIED: WatchResponse.Kind
    KIND_SNAPSHOT: WatchResponse.Kind
    KIND_EVENTS: WatchResponse.Kind
    KIND_PROGRESS: WatchResponse.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_COMPLETE_FIELD_NUMBER: _ClassVar[int]
    kind: WatchResponse.Kind
    revision: int
    events: _containers.RepeatedCompositeFieldContainer[WatchEvent]
    snapshot_complete: bool
    def __init__(self, kind: _Optional[_Union[WatchResponse.Kind, str]] = ..., revision: _Optional[int] = ..., events: _Optional[_Iterable[_Union[WatchEvent, _Mapping]]] = ..., snapshot_complete: _Optional[bool] = ...) -> None: ...

class RegisterWorkerRequest(_message.Message):
    __slots__ = ("worker", "lease_duration")
    WORKER_FIELD_NUMBER: _ClassVar[int]
    LEASE_DURATION_FIELD_NUMBER: _ClassVar[int]
    worker: Worker
    lease_duration: _duration_pb2.Duration
    def __init__(self, worker: _Optional[_Union[Worker, _Mapping]] = ..., lease_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class RegisterWorkerResponse(_message.Message):
    __slots__ = ("worker",)
    WORKER_FIELD_NUMBER: _ClassVar[int]
    worker: Worker
    def __init__(self, worker: _Optional[_Union[Worker, _Mapping]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("name", "versions", "observed_revision")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_REVISION_FIELD_NUMBER: _ClassVar[int]
    name: str
    versions: _containers.RepeatedCompositeFieldContainer[WorkerVersionState]
    observed_revision: int
    def __init__(self, name: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[WorkerVersionState, _Mapping]]] = ..., observed_revision: _Optional[int] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("lease_expire_time",)
    LEASE_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    lease_expire_time: _timestamp_pb2.Timestamp
    def __init__(self, lease_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StreamHeartbeatsRequest(_message.Message):
    __slots__ = ("heartbeat",)
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    heartbeat: HeartbeatRequest
    def __init__(self, heartbeat: _Optional[_Union[HeartbeatRequest, _Mapping]] = ...) -> None: ...

class StreamHeartbeatsResponse(_message.Message):
    __slots__ = ("heartbeat",)
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    heartbeat: HeartbeatResponse
    def __init__(self, heartbeat: _Optional[_Union[HeartbeatResponse, _Mapping]] = ...) -> None: ...

class ListWorkersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListWorkersResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[Worker]
    def __init__(self, workers: _Optional[_Iterable[_Union[Worker, _Mapping]]] = ...) -> None: ...

class DeleteWorkerRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteWorkerResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateTokenRequest(_message.Message):
    __slots__ = ("display_name", "role", "ttl", "worker_id")
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    display_name: str
    role: Role
    ttl: _duration_pb2.Duration
    worker_id: str
    def __init__(self, display_name: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., worker_id: _Optional[str] = ...) -> None: ...

class CreateTokenResponse(_message.Message):
    __slots__ = ("token", "secret")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    token: Token
    secret: str
    def __init__(self, token: _Optional[_Union[Token, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class ListTokensRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTokensResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[Token]
    def __init__(self, tokens: _Optional[_Iterable[_Union[Token, _Mapping]]] = ...) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RevokeTokenResponse(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: Token
    def __init__(self, token: _Optional[_Union[Token, _Mapping]] = ...) -> None: ...

class ListAuditEventsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "target")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    target: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., target: _Optional[str] = ...) -> None: ...

class ListAuditEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class VerifyAuditRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VerifyAuditResponse(_message.Message):
    __slots__ = ("ok", "events_checked", "first_bad_sequence", "problem", "checkpoint_sequence", "key_id")
    OK_FIELD_NUMBER: _ClassVar[int]
    EVENTS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    FIRST_BAD_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    events_checked: int
    first_bad_sequence: int
    problem: str
    checkpoint_sequence: int
    key_id: str
    def __init__(self, ok: _Optional[bool] = ..., events_checked: _Optional[int] = ..., first_bad_sequence: _Optional[int] = ..., problem: _Optional[str] = ..., checkpoint_sequence: _Optional[int] = ..., key_id: _Optional[str] = ...) -> None: ...

class ControlRolloutRequest(_message.Message):
    __slots__ = ("name", "action", "reason")
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ACTION_UNSPECIFIED: _ClassVar[ControlRolloutRequest.Action]
        ACTION_PAUSE: _ClassVar[ControlRolloutRequest.Action]
        ACTION_RESUME: _ClassVar[ControlRolloutRequest.Action]
        ACTION_PROMOTE: _ClassVar[ControlRolloutRequest.Action]
        ACTION_ABORT: _ClassVar[ControlRolloutRequest.Action]
    ACTION_UNSPECIFIED: ControlRolloutRequest.Action
    ACTION_PAUSE: ControlRolloutRequest.Action
    ACTION_RESUME: ControlRolloutRequest.Action
    ACTION_PROMOTE: ControlRolloutRequest.Action
    ACTION_ABORT: ControlRolloutRequest.Action
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    action: ControlRolloutRequest.Action
    reason: str
    def __init__(self, name: _Optional[str] = ..., action: _Optional[_Union[ControlRolloutRequest.Action, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class ControlRolloutResponse(_message.Message):
    __slots__ = ("rollout",)
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    rollout: Rollout
    def __init__(self, rollout: _Optional[_Union[Rollout, _Mapping]] = ...) -> None: ...

class Histogram(_message.Message):
    __slots__ = ("bounds", "counts")
    BOUNDS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    bounds: _containers.RepeatedScalarFieldContainer[float]
    counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, bounds: _Optional[_Iterable[float]] = ..., counts: _Optional[_Iterable[int]] = ...) -> None: ...

class FeatureHistogram(_message.Message):
    __slots__ = ("name", "bin_edges", "counts")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BIN_EDGES_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    bin_edges: _containers.RepeatedScalarFieldContainer[float]
    counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., bin_edges: _Optional[_Iterable[float]] = ..., counts: _Optional[_Iterable[int]] = ...) -> None: ...

class GroupOutcomes(_message.Message):
    __slots__ = ("group", "predictions", "positive", "feedback_correct", "feedback_total")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    POSITIVE_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_CORRECT_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_TOTAL_FIELD_NUMBER: _ClassVar[int]
    group: str
    predictions: int
    positive: int
    feedback_correct: int
    feedback_total: int
    def __init__(self, group: _Optional[str] = ..., predictions: _Optional[int] = ..., positive: _Optional[int] = ..., feedback_correct: _Optional[int] = ..., feedback_total: _Optional[int] = ...) -> None: ...

class Window(_message.Message):
    __slots__ = ("model", "version", "source", "reporter", "shadow", "start_time", "end_time", "requests", "errors", "latency", "inputs", "outputs", "feedback_correct", "feedback_total", "groups")
    class ErrorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REPORTER_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_CORRECT_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_TOTAL_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    source: WindowSource
    reporter: str
    shadow: bool
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    requests: int
    errors: _containers.ScalarMap[str, int]
    latency: Histogram
    inputs: _containers.RepeatedCompositeFieldContainer[FeatureHistogram]
    outputs: _containers.RepeatedCompositeFieldContainer[FeatureHistogram]
    feedback_correct: int
    feedback_total: int
    groups: _containers.RepeatedCompositeFieldContainer[GroupOutcomes]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., source: _Optional[_Union[WindowSource, str]] = ..., reporter: _Optional[str] = ..., shadow: _Optional[bool] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., requests: _Optional[int] = ..., errors: _Optional[_Mapping[str, int]] = ..., latency: _Optional[_Union[Histogram, _Mapping]] = ..., inputs: _Optional[_Iterable[_Union[FeatureHistogram, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[FeatureHistogram, _Mapping]]] = ..., feedback_correct: _Optional[int] = ..., feedback_total: _Optional[int] = ..., groups: _Optional[_Iterable[_Union[GroupOutcomes, _Mapping]]] = ...) -> None: ...

class ReportWindowsRequest(_message.Message):
    __slots__ = ("windows",)
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    windows: _containers.RepeatedCompositeFieldContainer[Window]
    def __init__(self, windows: _Optional[_Iterable[_Union[Window, _Mapping]]] = ...) -> None: ...

class ReportWindowsResponse(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    def __init__(self, accepted: _Optional[int] = ...) -> None: ...

class VersionMetrics(_message.Message):
    __slots__ = ("version", "start_time", "end_time", "requests", "errors", "error_rate", "p50_seconds", "p99_seconds", "feedback_total", "accuracy", "drift_psi", "max_drift_psi", "worst_feature", "groups", "fairness_gap", "ready_workers", "client_errors")
    class DriftPsiEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    P50_SECONDS_FIELD_NUMBER: _ClassVar[int]
    P99_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    DRIFT_PSI_FIELD_NUMBER: _ClassVar[int]
    MAX_DRIFT_PSI_FIELD_NUMBER: _ClassVar[int]
    WORST_FEATURE_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    FAIRNESS_GAP_FIELD_NUMBER: _ClassVar[int]
    READY_WORKERS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ERRORS_FIELD_NUMBER: _ClassVar[int]
    version: int
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    requests: int
    errors: int
    error_rate: float
    p50_seconds: float
    p99_seconds: float
    feedback_total: int
    accuracy: float
    drift_psi: _containers.ScalarMap[str, float]
    max_drift_psi: float
    worst_feature: str
    groups: _containers.RepeatedCompositeFieldContainer[GroupOutcomes]
    fairness_gap: float
    ready_workers: int
    client_errors: int
    def __init__(self, version: _Optional[int] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., error_rate: _Optional[float] = ..., p50_seconds: _Optional[float] = ..., p99_seconds: _Optional[float] = ..., feedback_total: _Optional[int] = ..., accuracy: _Optional[float] = ..., drift_psi: _Optional[_Mapping[str, float]] = ..., max_drift_psi: _Optional[float] = ..., worst_feature: _Optional[str] = ..., groups: _Optional[_Iterable[_Union[GroupOutcomes, _Mapping]]] = ..., fairness_gap: _Optional[float] = ..., ready_workers: _Optional[int] = ..., client_errors: _Optional[int] = ...) -> None: ...

class GetVersionMetricsRequest(_message.Message):
    __slots__ = ("parent", "window")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    parent: str
    window: _duration_pb2.Duration
    def __init__(self, parent: _Optional[str] = ..., window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class GetVersionMetricsResponse(_message.Message):
    __slots__ = ("metrics",)
    METRICS_FIELD_NUMBER: _ClassVar[int]
    metrics: _containers.RepeatedCompositeFieldContainer[VersionMetrics]
    def __init__(self, metrics: _Optional[_Iterable[_Union[VersionMetrics, _Mapping]]] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("name", "alert", "severity", "state", "model", "version", "summary", "details", "start_time", "end_time", "sequence")
    class Severity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        SEVERITY_UNSPECIFIED: _ClassVar[Alert.Severity]
        SEVERITY_INFO: _ClassVar[Alert.Severity]
        SEVERITY_WARNING: _ClassVar[Alert.Severity]
        SEVERITY_CRITICAL: _ClassVar[Alert.Severity]
    SEVERITY_UNSPECIFIED: Alert.Severity
    SEVERITY_INFO: Alert.Severity
    SEVERITY_WARNING: Alert.Severity
    SEVERITY_CRITICAL: Alert.Severity
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Alert.State]
        STATE_FIRING: _ClassVar[Alert.State]
        STATE_RESOLVED: _ClassVar[Alert.State]
    STATE_UNSPECIFIED: Alert.State
    STATE_FIRING: Alert.State
    STATE_RESOLVED: Alert.State
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALERT_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    alert: str
    severity: Alert.Severity
    state: Alert.State
    model: str
    version: int
    summary: str
    details: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    sequence: int
    def __init__(self, name: _Optional[str] = ..., alert: _Optional[str] = ..., severity: _Optional[_Union[Alert.Severity, str]] = ..., state: _Optional[_Union[Alert.State, str]] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., summary: _Optional[str] = ..., details: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sequence: _Optional[int] = ...) -> None: ...

class ListAlertsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "firing_only", "model")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FIRING_ONLY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    firing_only: bool
    model: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., firing_only: _Optional[bool] = ..., model: _Optional[str] = ...) -> None: ...

class ListAlertsResponse(_message.Message):
    __slots__ = ("alerts", "next_page_token")
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    alerts: _containers.RepeatedCompositeFieldContainer[Alert]
    next_page_token: str
    def __init__(self, alerts: _Optional[_Iterable[_Union[Alert, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchAlertsRequest(_message.Message):
    __slots__ = ("since_sequence",)
    SINCE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    since_sequence: int
    def __init__(self, since_sequence: _Optional[int] = ...) -> None: ...

class WatchAlertsResponse(_message.Message):
    __slots__ = ("alerts",)
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    alerts: _containers.RepeatedCompositeFieldContainer[Alert]
    def __init__(self, alerts: _Optional[_Iterable[_Union[Alert, _Mapping]]] = ...) -> None: ...

class AppendEventsRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_events_pb2.Event]
    def __init__(self, events: _Optional[_Iterable[_Union[_events_pb2.Event, _Mapping]]] = ...) -> None: ...

class AppendEventsResponse(_message.Message):
    __slots__ = ("sequences", "duplicates", "stored", "duplicate_count")
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_COUNT_FIELD_NUMBER: _ClassVar[int]
    sequences: _containers.RepeatedScalarFieldContainer[int]
    duplicates: _containers.RepeatedScalarFieldContainer[bool]
    stored: int
    duplicate_count: int
    def __init__(self, sequences: _Optional[_Iterable[int]] = ..., duplicates: _Optional[_Iterable[bool]] = ..., stored: _Optional[int] = ..., duplicate_count: _Optional[int] = ...) -> None: ...

class ReadEventsRequest(_message.Message):
    __slots__ = ("after_sequence", "start", "model", "kinds", "follow", "max_batch")
    class Start(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        START_UNSPECIFIED: _ClassVar[ReadEventsRequest.Start]
        START_AFTER_SEQUENCE: _ClassVar[ReadEventsRequest.Start]
        START_OLDEST: _ClassVar[ReadEventsRequest.Start]
        START_LATEST: _ClassVar[ReadEventsRequest.Start]
    START_UNSPECIFIED: ReadEventsRequest.Start
    START_AFTER_SEQUENCE: ReadEventsRequest.Start
    START_OLDEST: ReadEventsRequest.Start
    START_LATEST: ReadEventsRequest.Start
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    after_sequence: int
    start: ReadEventsRequest.Start
    model: str
    kinds: _containers.RepeatedScalarFieldContainer[_events_pb2.EventKind]
    follow: bool
    max_batch: int
    def __init__(self, after_sequence: _Optional[int] = ..., start: _Optional[_Union[ReadEventsRequest.Start, str]] = ..., model: _Optional[str] = ..., kinds: _Optional[_Iterable[_Union[_events_pb2.EventKind, str]]] = ..., follow: _Optional[bool] = ..., max_batch: _Optional[int] = ...) -> None: ...

class ReadEventsResponse(_message.Message):
    __slots__ = ("events", "first_sequence", "last_sequence", "read_through")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    READ_THROUGH_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_events_pb2.Event]
    first_sequence: int
    last_sequence: int
    read_through: int
    def __init__(self, events: _Optional[_Iterable[_Union[_events_pb2.Event, _Mapping]]] = ..., first_sequence: _Optional[int] = ..., last_sequence: _Optional[int] = ..., read_through: _Optional[int] = ...) -> None: ...

class ImportExamplesRequest(_message.Message):
    __slots__ = ("header", "rows")
    class Header(_message.Message):
        __slots__ = ("model", "features", "source", "digest", "examples")
        MODEL_FIELD_NUMBER: _ClassVar[int]
        FEATURES_FIELD_NUMBER: _ClassVar[int]
        SOURCE_FIELD_NUMBER: _ClassVar[int]
        DIGEST_FIELD_NUMBER: _ClassVar[int]
        EXAMPLES_FIELD_NUMBER: _ClassVar[int]
        model: str
        features: _containers.RepeatedScalarFieldContainer[str]
        source: str
        digest: str
        examples: int
        def __init__(self, model: _Optional[str] = ..., features: _Optional[_Iterable[str]] = ..., source: _Optional[str] = ..., digest: _Optional[str] = ..., examples: _Optional[int] = ...) -> None: ...
    class Rows(_message.Message):
        __slots__ = ("examples", "lines", "groups")
        EXAMPLES_FIELD_NUMBER: _ClassVar[int]
        LINES_FIELD_NUMBER: _ClassVar[int]
        GROUPS_FIELD_NUMBER: _ClassVar[int]
        examples: _containers.RepeatedCompositeFieldContainer[_gateway_pb2.Example]
        lines: _containers.RepeatedScalarFieldContainer[int]
        groups: _containers.RepeatedScalarFieldContainer[str]
        def __init__(self, examples: _Optional[_Iterable[_Union[_gateway_pb2.Example, _Mapping]]] = ..., lines: _Optional[_Iterable[int]] = ..., groups: _Optional[_Iterable[str]] = ...) -> None: ...
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    header: ImportExamplesRequest.Header
    rows: ImportExamplesRequest.Rows
    def __init__(self, header: _Optional[_Union[ImportExamplesRequest.Header, _Mapping]] = ..., rows: _Optional[_Union[ImportExamplesRequest.Rows, _Mapping]] = ...) -> None: ...

class ImportExamplesResponse(_message.Message):
    __slots__ = ("received", "stored", "duplicates", "first_sequence", "last_sequence")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    received: int
    stored: int
    duplicates: int
    first_sequence: int
    last_sequence: int
    def __init__(self, received: _Optional[int] = ..., stored: _Optional[int] = ..., duplicates: _Optional[int] = ..., first_sequence: _Optional[int] = ..., last_sequence: _Optional[int] = ...) -> None: ...

class GetEventStatsRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class EventKindCount(_message.Message):
    __slots__ = ("kind", "count")
    KIND_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    kind: _events_pb2.EventKind
    count: int
    def __init__(self, kind: _Optional[_Union[_events_pb2.EventKind, str]] = ..., count: _Optional[int] = ...) -> None: ...

class EventConsumerLag(_message.Message):
    __slots__ = ("name", "position", "pending")
    NAME_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    name: str
    position: int
    pending: int
    def __init__(self, name: _Optional[str] = ..., position: _Optional[int] = ..., pending: _Optional[int] = ...) -> None: ...

class GetEventStatsResponse(_message.Message):
    __slots__ = ("backend", "counts", "first_sequence", "last_sequence", "oldest_time", "newest_time", "bytes", "retention_age", "retention_bytes", "joined", "feedback_unmatched", "predictions_expired", "joined_fraction", "consumers")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    OLDEST_TIME_FIELD_NUMBER: _ClassVar[int]
    NEWEST_TIME_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    RETENTION_AGE_FIELD_NUMBER: _ClassVar[int]
    RETENTION_BYTES_FIELD_NUMBER: _ClassVar[int]
    JOINED_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_UNMATCHED_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_EXPIRED_FIELD_NUMBER: _ClassVar[int]
    JOINED_FRACTION_FIELD_NUMBER: _ClassVar[int]
    CONSUMERS_FIELD_NUMBER: _ClassVar[int]
    backend: str
    counts: _containers.RepeatedCompositeFieldContainer[EventKindCount]
    first_sequence: int
    last_sequence: int
    oldest_time: _timestamp_pb2.Timestamp
    newest_time: _timestamp_pb2.Timestamp
    bytes: int
    retention_age: _duration_pb2.Duration
    retention_bytes: int
    joined: int
    feedback_unmatched: int
    predictions_expired: int
    joined_fraction: float
    consumers: _containers.RepeatedCompositeFieldContainer[EventConsumerLag]
    def __init__(self, backend: _Optional[str] = ..., counts: _Optional[_Iterable[_Union[EventKindCount, _Mapping]]] = ..., first_sequence: _Optional[int] = ..., last_sequence: _Optional[int] = ..., oldest_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., newest_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., bytes: _Optional[int] = ..., retention_age: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., retention_bytes: _Optional[int] = ..., joined: _Optional[int] = ..., feedback_unmatched: _Optional[int] = ..., predictions_expired: _Optional[int] = ..., joined_fraction: _Optional[float] = ..., consumers: _Optional[_Iterable[_Union[EventConsumerLag, _Mapping]]] = ...) -> None: ...
