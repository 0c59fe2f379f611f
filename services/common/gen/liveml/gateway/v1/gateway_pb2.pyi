import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Label(_message.Message):
    __slots__ = ("class_index", "number", "text")
    CLASS_INDEX_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    class_index: int
    number: float
    text: str
    def __init__(self, class_index: _Optional[int] = ..., number: _Optional[float] = ..., text: _Optional[str] = ...) -> None: ...

class SubmitFeedbackRequest(_message.Message):
    __slots__ = ("model_name", "request_id", "ground_truth", "groups", "observe_time")
    class GroupsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    GROUND_TRUTH_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    OBSERVE_TIME_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    request_id: str
    ground_truth: Label
    groups: _containers.ScalarMap[str, str]
    observe_time: _timestamp_pb2.Timestamp
    def __init__(self, model_name: _Optional[str] = ..., request_id: _Optional[str] = ..., ground_truth: _Optional[_Union[Label, _Mapping]] = ..., groups: _Optional[_Mapping[str, str]] = ..., observe_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SubmitFeedbackResponse(_message.Message):
    __slots__ = ("matched", "model_version", "correct")
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    matched: bool
    model_version: str
    correct: bool
    def __init__(self, matched: _Optional[bool] = ..., model_version: _Optional[str] = ..., correct: _Optional[bool] = ...) -> None: ...

class Example(_message.Message):
    __slots__ = ("features", "label", "key", "event_time")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    features: _containers.RepeatedScalarFieldContainer[float]
    label: Label
    key: str
    event_time: _timestamp_pb2.Timestamp
    def __init__(self, features: _Optional[_Iterable[float]] = ..., label: _Optional[_Union[Label, _Mapping]] = ..., key: _Optional[str] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class IngestExamplesRequest(_message.Message):
    __slots__ = ("model_name", "examples")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    examples: _containers.RepeatedCompositeFieldContainer[Example]
    def __init__(self, model_name: _Optional[str] = ..., examples: _Optional[_Iterable[_Union[Example, _Mapping]]] = ...) -> None: ...

class IngestExamplesResponse(_message.Message):
    __slots__ = ("accepted", "duplicates")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    duplicates: int
    def __init__(self, accepted: _Optional[int] = ..., duplicates: _Optional[int] = ...) -> None: ...
