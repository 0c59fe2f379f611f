import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from services.common.gen.liveml.registry.v1 import registry_pb2 as _registry_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrainingTask(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAINING_TASK_UNSPECIFIED: _ClassVar[TrainingTask]
    TRAINING_TASK_CLASSIFICATION: _ClassVar[TrainingTask]
    TRAINING_TASK_REGRESSION: _ClassVar[TrainingTask]

class ApprovalMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    APPROVAL_MODE_UNSPECIFIED: _ClassVar[ApprovalMode]
    APPROVAL_MODE_AUTO: _ClassVar[ApprovalMode]
    APPROVAL_MODE_MANUAL: _ClassVar[ApprovalMode]

class TrainingMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAINING_MODE_UNSPECIFIED: _ClassVar[TrainingMode]
    TRAINING_MODE_BATCH: _ClassVar[TrainingMode]
    TRAINING_MODE_ONLINE: _ClassVar[TrainingMode]

class OnlineRollout(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ONLINE_ROLLOUT_UNSPECIFIED: _ClassVar[OnlineRollout]
    ONLINE_ROLLOUT_CANARY: _ClassVar[OnlineRollout]
    ONLINE_ROLLOUT_DIRECT: _ClassVar[OnlineRollout]

class TrainingTrigger(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAINING_TRIGGER_UNSPECIFIED: _ClassVar[TrainingTrigger]
    TRAINING_TRIGGER_MANUAL: _ClassVar[TrainingTrigger]
    TRAINING_TRIGGER_SCHEDULE: _ClassVar[TrainingTrigger]
    TRAINING_TRIGGER_DATA_VOLUME: _ClassVar[TrainingTrigger]
    TRAINING_TRIGGER_ALERT: _ClassVar[TrainingTrigger]
    TRAINING_TRIGGER_RETRY: _ClassVar[TrainingTrigger]
TRAINING_TASK_UNSPECIFIED: TrainingTask
TRAINING_TASK_CLASSIFICATION: TrainingTask
TRAINING_TASK_REGRESSION: TrainingTask
APPROVAL_MODE_UNSPECIFIED: ApprovalMode
APPROVAL_MODE_AUTO: ApprovalMode
APPROVAL_MODE_MANUAL: ApprovalMode
TRAINING_MODE_UNSPECIFIED: TrainingMode
TRAINING_MODE_BATCH: TrainingMode
TRAINING_MODE_ONLINE: TrainingMode
ONLINE_ROLLOUT_UNSPECIFIED: OnlineRollout
ONLINE_ROLLOUT_CANARY: OnlineRollout
ONLINE_ROLLOUT_DIRECT: OnlineRollout
TRAINING_TRIGGER_UNSPECIFIED: TrainingTrigger
TRAINING_TRIGGER_MANUAL: TrainingTrigger
TRAINING_TRIGGER_SCHEDULE: TrainingTrigger
TRAINING_TRIGGER_DATA_VOLUME: TrainingTrigger
TRAINING_TRIGGER_ALERT: TrainingTrigger
TRAINING_TRIGGER_RETRY: TrainingTrigger

class LearnerStatus(_message.Message):
    __slots__ = ("name", "learner", "fencing_token", "lease_expire_time", "last_sequence", "applied", "sequence_sum", "lag", "prequential_accuracy", "prequential_rmse", "drift_state", "drift_sequences", "quarantined", "checkpoint_number", "checkpoint_bytes", "checkpoint_time", "published_version", "publish_time", "publish_decision", "publishing_stopped", "stopped_reason", "examples_per_second")
    class QuarantinedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LEARNER_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_SUM_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    PREQUENTIAL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    PREQUENTIAL_RMSE_FIELD_NUMBER: _ClassVar[int]
    DRIFT_STATE_FIELD_NUMBER: _ClassVar[int]
    DRIFT_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    QUARANTINED_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_NUMBER_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_TIME_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_VERSION_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_TIME_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_DECISION_FIELD_NUMBER: _ClassVar[int]
    PUBLISHING_STOPPED_FIELD_NUMBER: _ClassVar[int]
    STOPPED_REASON_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    name: str
    learner: str
    fencing_token: int
    lease_expire_time: _timestamp_pb2.Timestamp
    last_sequence: int
    applied: int
    sequence_sum: int
    lag: int
    prequential_accuracy: float
    prequential_rmse: float
    drift_state: str
    drift_sequences: _containers.RepeatedScalarFieldContainer[int]
    quarantined: _containers.ScalarMap[str, int]
    checkpoint_number: int
    checkpoint_bytes: int
    checkpoint_time: _timestamp_pb2.Timestamp
    published_version: int
    publish_time: _timestamp_pb2.Timestamp
    publish_decision: str
    publishing_stopped: bool
    stopped_reason: str
    examples_per_second: float
    def __init__(self, name: _Optional[str] = ..., learner: _Optional[str] = ..., fencing_token: _Optional[int] = ..., lease_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_sequence: _Optional[int] = ..., applied: _Optional[int] = ..., sequence_sum: _Optional[int] = ..., lag: _Optional[int] = ..., prequential_accuracy: _Optional[float] = ..., prequential_rmse: _Optional[float] = ..., drift_state: _Optional[str] = ..., drift_sequences: _Optional[_Iterable[int]] = ..., quarantined: _Optional[_Mapping[str, int]] = ..., checkpoint_number: _Optional[int] = ..., checkpoint_bytes: _Optional[int] = ..., checkpoint_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., published_version: _Optional[int] = ..., publish_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., publish_decision: _Optional[str] = ..., publishing_stopped: _Optional[bool] = ..., stopped_reason: _Optional[str] = ..., examples_per_second: _Optional[float] = ...) -> None: ...

class ClaimLearnerRequest(_message.Message):
    __slots__ = ("parent", "learner", "lease_duration")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    LEARNER_FIELD_NUMBER: _ClassVar[int]
    LEASE_DURATION_FIELD_NUMBER: _ClassVar[int]
    parent: str
    learner: str
    lease_duration: _duration_pb2.Duration
    def __init__(self, parent: _Optional[str] = ..., learner: _Optional[str] = ..., lease_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ClaimLearnerResponse(_message.Message):
    __slots__ = ("granted", "fencing_token", "checkpoint", "status")
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    granted: bool
    fencing_token: int
    checkpoint: bytes
    status: LearnerStatus
    def __init__(self, granted: _Optional[bool] = ..., fencing_token: _Optional[int] = ..., checkpoint: _Optional[bytes] = ..., status: _Optional[_Union[LearnerStatus, _Mapping]] = ...) -> None: ...

class CommitLearnerCheckpointRequest(_message.Message):
    __slots__ = ("parent", "learner", "fencing_token", "checkpoint", "status", "lease_duration")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    LEARNER_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LEASE_DURATION_FIELD_NUMBER: _ClassVar[int]
    parent: str
    learner: str
    fencing_token: int
    checkpoint: bytes
    status: LearnerStatus
    lease_duration: _duration_pb2.Duration
    def __init__(self, parent: _Optional[str] = ..., learner: _Optional[str] = ..., fencing_token: _Optional[int] = ..., checkpoint: _Optional[bytes] = ..., status: _Optional[_Union[LearnerStatus, _Mapping]] = ..., lease_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class CommitLearnerCheckpointResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: LearnerStatus
    def __init__(self, status: _Optional[_Union[LearnerStatus, _Mapping]] = ...) -> None: ...

class PublishOnlineVersionRequest(_message.Message):
    __slots__ = ("parent", "learner", "fencing_token", "version", "checks")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    LEARNER_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    parent: str
    learner: str
    fencing_token: int
    version: int
    checks: _containers.RepeatedCompositeFieldContainer[GateCheck]
    def __init__(self, parent: _Optional[str] = ..., learner: _Optional[str] = ..., fencing_token: _Optional[int] = ..., version: _Optional[int] = ..., checks: _Optional[_Iterable[_Union[GateCheck, _Mapping]]] = ...) -> None: ...

class PublishOnlineVersionResponse(_message.Message):
    __slots__ = ("decision", "archived", "status")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    decision: str
    archived: _containers.RepeatedScalarFieldContainer[int]
    status: LearnerStatus
    def __init__(self, decision: _Optional[str] = ..., archived: _Optional[_Iterable[int]] = ..., status: _Optional[_Union[LearnerStatus, _Mapping]] = ...) -> None: ...

class GetLearnerStatusRequest(_message.Message):
    __slots__ = ("parent",)
    PARENT_FIELD_NUMBER: _ClassVar[int]
    parent: str
    def __init__(self, parent: _Optional[str] = ...) -> None: ...

class GetLearnerStatusResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: LearnerStatus
    def __init__(self, status: _Optional[_Union[LearnerStatus, _Mapping]] = ...) -> None: ...

class Estimator(_message.Message):
    __slots__ = ("class_path", "entry_point", "params", "returns_onnx")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CLASS_PATH_FIELD_NUMBER: _ClassVar[int]
    ENTRY_POINT_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    RETURNS_ONNX_FIELD_NUMBER: _ClassVar[int]
    class_path: str
    entry_point: str
    params: _containers.ScalarMap[str, str]
    returns_onnx: bool
    def __init__(self, class_path: _Optional[str] = ..., entry_point: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., returns_onnx: _Optional[bool] = ...) -> None: ...

class TrainingWindow(_message.Message):
    __slots__ = ("last_rows", "last")
    LAST_ROWS_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    last_rows: int
    last: _duration_pb2.Duration
    def __init__(self, last_rows: _Optional[int] = ..., last: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Holdout(_message.Message):
    __slots__ = ("fraction", "rows")
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    fraction: float
    rows: int
    def __init__(self, fraction: _Optional[float] = ..., rows: _Optional[int] = ...) -> None: ...

class TrainingTriggers(_message.Message):
    __slots__ = ("interval", "cron", "min_new_examples", "on_alert")
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    CRON_FIELD_NUMBER: _ClassVar[int]
    MIN_NEW_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    ON_ALERT_FIELD_NUMBER: _ClassVar[int]
    interval: _duration_pb2.Duration
    cron: str
    min_new_examples: int
    on_alert: bool
    def __init__(self, interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., cron: _Optional[str] = ..., min_new_examples: _Optional[int] = ..., on_alert: _Optional[bool] = ...) -> None: ...

class GatePolicy(_message.Message):
    __slots__ = ("min_holdout_rows", "floors", "max_regression", "max_relative_regression", "slice_column", "primary_metric", "non_inferiority_margin", "alpha", "parity_tolerance", "max_latency_ratio")
    class FloorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class MaxRegressionEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class MaxRelativeRegressionEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MIN_HOLDOUT_ROWS_FIELD_NUMBER: _ClassVar[int]
    FLOORS_FIELD_NUMBER: _ClassVar[int]
    MAX_REGRESSION_FIELD_NUMBER: _ClassVar[int]
    MAX_RELATIVE_REGRESSION_FIELD_NUMBER: _ClassVar[int]
    SLICE_COLUMN_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_METRIC_FIELD_NUMBER: _ClassVar[int]
    NON_INFERIORITY_MARGIN_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    PARITY_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    MAX_LATENCY_RATIO_FIELD_NUMBER: _ClassVar[int]
    min_holdout_rows: int
    floors: _containers.ScalarMap[str, float]
    max_regression: _containers.ScalarMap[str, float]
    max_relative_regression: _containers.ScalarMap[str, float]
    slice_column: str
    primary_metric: str
    non_inferiority_margin: float
    alpha: float
    parity_tolerance: float
    max_latency_ratio: float
    def __init__(self, min_holdout_rows: _Optional[int] = ..., floors: _Optional[_Mapping[str, float]] = ..., max_regression: _Optional[_Mapping[str, float]] = ..., max_relative_regression: _Optional[_Mapping[str, float]] = ..., slice_column: _Optional[str] = ..., primary_metric: _Optional[str] = ..., non_inferiority_margin: _Optional[float] = ..., alpha: _Optional[float] = ..., parity_tolerance: _Optional[float] = ..., max_latency_ratio: _Optional[float] = ...) -> None: ...

class TrainingPolicy(_message.Message):
    __slots__ = ("name", "task", "estimator", "features", "label", "dataset_uri", "time_column", "window", "holdout", "triggers", "cooldown", "gate", "approval", "canary", "updater", "update_time", "mode", "online")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    ESTIMATOR_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_URI_FIELD_NUMBER: _ClassVar[int]
    TIME_COLUMN_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_FIELD_NUMBER: _ClassVar[int]
    TRIGGERS_FIELD_NUMBER: _ClassVar[int]
    COOLDOWN_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    UPDATER_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    name: str
    task: TrainingTask
    estimator: Estimator
    features: _containers.RepeatedScalarFieldContainer[str]
    label: str
    dataset_uri: str
    time_column: str
    window: TrainingWindow
    holdout: Holdout
    triggers: TrainingTriggers
    cooldown: _duration_pb2.Duration
    gate: GatePolicy
    approval: ApprovalMode
    canary: _registry_pb2.AnalysisPolicy
    updater: str
    update_time: _timestamp_pb2.Timestamp
    mode: TrainingMode
    online: OnlinePolicy
    def __init__(self, name: _Optional[str] = ..., task: _Optional[_Union[TrainingTask, str]] = ..., estimator: _Optional[_Union[Estimator, _Mapping]] = ..., features: _Optional[_Iterable[str]] = ..., label: _Optional[str] = ..., dataset_uri: _Optional[str] = ..., time_column: _Optional[str] = ..., window: _Optional[_Union[TrainingWindow, _Mapping]] = ..., holdout: _Optional[_Union[Holdout, _Mapping]] = ..., triggers: _Optional[_Union[TrainingTriggers, _Mapping]] = ..., cooldown: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., gate: _Optional[_Union[GatePolicy, _Mapping]] = ..., approval: _Optional[_Union[ApprovalMode, str]] = ..., canary: _Optional[_Union[_registry_pb2.AnalysisPolicy, _Mapping]] = ..., updater: _Optional[str] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., mode: _Optional[_Union[TrainingMode, str]] = ..., online: _Optional[_Union[OnlinePolicy, _Mapping]] = ...) -> None: ...

class OnlinePolicy(_message.Message):
    __slots__ = ("batch_size", "publish_every", "publish_interval", "replay_ratio", "reservoir_per_class", "window", "classes", "max_accuracy_gap", "max_forgetting", "max_weight_change", "positive_rate_band", "min_label_rate", "rollout", "keep_versions", "checkpoint_interval")
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_EVERY_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    REPLAY_RATIO_FIELD_NUMBER: _ClassVar[int]
    RESERVOIR_PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    MAX_ACCURACY_GAP_FIELD_NUMBER: _ClassVar[int]
    MAX_FORGETTING_FIELD_NUMBER: _ClassVar[int]
    MAX_WEIGHT_CHANGE_FIELD_NUMBER: _ClassVar[int]
    POSITIVE_RATE_BAND_FIELD_NUMBER: _ClassVar[int]
    MIN_LABEL_RATE_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    KEEP_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    batch_size: int
    publish_every: int
    publish_interval: _duration_pb2.Duration
    replay_ratio: float
    reservoir_per_class: int
    window: int
    classes: _containers.RepeatedScalarFieldContainer[int]
    max_accuracy_gap: float
    max_forgetting: float
    max_weight_change: float
    positive_rate_band: float
    min_label_rate: float
    rollout: OnlineRollout
    keep_versions: int
    checkpoint_interval: _duration_pb2.Duration
    def __init__(self, batch_size: _Optional[int] = ..., publish_every: _Optional[int] = ..., publish_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., replay_ratio: _Optional[float] = ..., reservoir_per_class: _Optional[int] = ..., window: _Optional[int] = ..., classes: _Optional[_Iterable[int]] = ..., max_accuracy_gap: _Optional[float] = ..., max_forgetting: _Optional[float] = ..., max_weight_change: _Optional[float] = ..., positive_rate_band: _Optional[float] = ..., min_label_rate: _Optional[float] = ..., rollout: _Optional[_Union[OnlineRollout, str]] = ..., keep_versions: _Optional[int] = ..., checkpoint_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class GateCheck(_message.Message):
    __slots__ = ("name", "slice", "candidate", "production", "limit", "passed", "text")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SLICE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    PRODUCTION_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    name: str
    slice: str
    candidate: float
    production: float
    limit: float
    passed: bool
    text: str
    def __init__(self, name: _Optional[str] = ..., slice: _Optional[str] = ..., candidate: _Optional[float] = ..., production: _Optional[float] = ..., limit: _Optional[float] = ..., passed: _Optional[bool] = ..., text: _Optional[str] = ...) -> None: ...

class TrainingRun(_message.Message):
    __slots__ = ("name", "number", "trigger", "reasons", "state", "attempt", "retry_of", "trainer", "lease_expire_time", "dataset", "train_rows", "holdout_rows", "first_sequence", "last_sequence", "production_version", "checks", "candidate_metrics", "production_metrics", "version", "canary_phase", "canary_decision", "error", "stage_seconds", "create_time", "start_time", "end_time", "source_rows", "dropped_rows")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[TrainingRun.State]
        STATE_QUEUED: _ClassVar[TrainingRun.State]
        STATE_RUNNING: _ClassVar[TrainingRun.State]
        STATE_SUCCEEDED: _ClassVar[TrainingRun.State]
        STATE_REJECTED: _ClassVar[TrainingRun.State]
        STATE_FAILED: _ClassVar[TrainingRun.State]
    STATE_UNSPECIFIED: TrainingRun.State
    STATE_QUEUED: TrainingRun.State
    STATE_RUNNING: TrainingRun.State
    STATE_SUCCEEDED: TrainingRun.State
    STATE_REJECTED: TrainingRun.State
    STATE_FAILED: TrainingRun.State
    class CandidateMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ProductionMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class StageSecondsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RETRY_OF_FIELD_NUMBER: _ClassVar[int]
    TRAINER_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ROWS_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_ROWS_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PRODUCTION_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_METRICS_FIELD_NUMBER: _ClassVar[int]
    PRODUCTION_METRICS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CANARY_PHASE_FIELD_NUMBER: _ClassVar[int]
    CANARY_DECISION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STAGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ROWS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_ROWS_FIELD_NUMBER: _ClassVar[int]
    name: str
    number: int
    trigger: TrainingTrigger
    reasons: _containers.RepeatedScalarFieldContainer[str]
    state: TrainingRun.State
    attempt: int
    retry_of: str
    trainer: str
    lease_expire_time: _timestamp_pb2.Timestamp
    dataset: _registry_pb2.Dataset
    train_rows: int
    holdout_rows: int
    first_sequence: int
    last_sequence: int
    production_version: int
    checks: _containers.RepeatedCompositeFieldContainer[GateCheck]
    candidate_metrics: _containers.ScalarMap[str, float]
    production_metrics: _containers.ScalarMap[str, float]
    version: int
    canary_phase: _registry_pb2.AnalysisStatus.Phase
    canary_decision: str
    error: str
    stage_seconds: _containers.ScalarMap[str, float]
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    source_rows: int
    dropped_rows: int
    def __init__(self, name: _Optional[str] = ..., number: _Optional[int] = ..., trigger: _Optional[_Union[TrainingTrigger, str]] = ..., reasons: _Optional[_Iterable[str]] = ..., state: _Optional[_Union[TrainingRun.State, str]] = ..., attempt: _Optional[int] = ..., retry_of: _Optional[str] = ..., trainer: _Optional[str] = ..., lease_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., dataset: _Optional[_Union[_registry_pb2.Dataset, _Mapping]] = ..., train_rows: _Optional[int] = ..., holdout_rows: _Optional[int] = ..., first_sequence: _Optional[int] = ..., last_sequence: _Optional[int] = ..., production_version: _Optional[int] = ..., checks: _Optional[_Iterable[_Union[GateCheck, _Mapping]]] = ..., candidate_metrics: _Optional[_Mapping[str, float]] = ..., production_metrics: _Optional[_Mapping[str, float]] = ..., version: _Optional[int] = ..., canary_phase: _Optional[_Union[_registry_pb2.AnalysisStatus.Phase, str]] = ..., canary_decision: _Optional[str] = ..., error: _Optional[str] = ..., stage_seconds: _Optional[_Mapping[str, float]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source_rows: _Optional[int] = ..., dropped_rows: _Optional[int] = ...) -> None: ...

class SetTrainingPolicyRequest(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: TrainingPolicy
    def __init__(self, policy: _Optional[_Union[TrainingPolicy, _Mapping]] = ...) -> None: ...

class SetTrainingPolicyResponse(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: TrainingPolicy
    def __init__(self, policy: _Optional[_Union[TrainingPolicy, _Mapping]] = ...) -> None: ...

class GetTrainingPolicyRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetTrainingPolicyResponse(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: TrainingPolicy
    def __init__(self, policy: _Optional[_Union[TrainingPolicy, _Mapping]] = ...) -> None: ...

class ListTrainingPoliciesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTrainingPoliciesResponse(_message.Message):
    __slots__ = ("policies",)
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    policies: _containers.RepeatedCompositeFieldContainer[TrainingPolicy]
    def __init__(self, policies: _Optional[_Iterable[_Union[TrainingPolicy, _Mapping]]] = ...) -> None: ...

class DeleteTrainingPolicyRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteTrainingPolicyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RequestTrainingRunRequest(_message.Message):
    __slots__ = ("parent", "trigger", "reason")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    parent: str
    trigger: TrainingTrigger
    reason: str
    def __init__(self, parent: _Optional[str] = ..., trigger: _Optional[_Union[TrainingTrigger, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class RequestTrainingRunResponse(_message.Message):
    __slots__ = ("run", "created")
    RUN_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    run: TrainingRun
    created: bool
    def __init__(self, run: _Optional[_Union[TrainingRun, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetTrainingRunRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetTrainingRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: TrainingRun
    def __init__(self, run: _Optional[_Union[TrainingRun, _Mapping]] = ...) -> None: ...

class ListTrainingRunsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTrainingRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[TrainingRun]
    next_page_token: str
    def __init__(self, runs: _Optional[_Iterable[_Union[TrainingRun, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ClaimTrainingRunRequest(_message.Message):
    __slots__ = ("trainer", "lease_duration")
    TRAINER_FIELD_NUMBER: _ClassVar[int]
    LEASE_DURATION_FIELD_NUMBER: _ClassVar[int]
    trainer: str
    lease_duration: _duration_pb2.Duration
    def __init__(self, trainer: _Optional[str] = ..., lease_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ClaimTrainingRunResponse(_message.Message):
    __slots__ = ("run", "policy")
    RUN_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    run: TrainingRun
    policy: TrainingPolicy
    def __init__(self, run: _Optional[_Union[TrainingRun, _Mapping]] = ..., policy: _Optional[_Union[TrainingPolicy, _Mapping]] = ...) -> None: ...

class UpdateTrainingRunRequest(_message.Message):
    __slots__ = ("run", "lease_duration")
    RUN_FIELD_NUMBER: _ClassVar[int]
    LEASE_DURATION_FIELD_NUMBER: _ClassVar[int]
    run: TrainingRun
    lease_duration: _duration_pb2.Duration
    def __init__(self, run: _Optional[_Union[TrainingRun, _Mapping]] = ..., lease_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class UpdateTrainingRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: TrainingRun
    def __init__(self, run: _Optional[_Union[TrainingRun, _Mapping]] = ...) -> None: ...
