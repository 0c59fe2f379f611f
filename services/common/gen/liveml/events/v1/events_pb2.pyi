import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from services.common.gen.liveml.gateway.v1 import gateway_pb2 as _gateway_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_PREDICTION: _ClassVar[EventKind]
    EVENT_KIND_FEEDBACK: _ClassVar[EventKind]
    EVENT_KIND_EXAMPLE: _ClassVar[EventKind]

class ExampleOrigin(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXAMPLE_ORIGIN_UNSPECIFIED: _ClassVar[ExampleOrigin]
    EXAMPLE_ORIGIN_INGESTED: _ClassVar[ExampleOrigin]
    EXAMPLE_ORIGIN_IMPORTED: _ClassVar[ExampleOrigin]
    EXAMPLE_ORIGIN_JOINED: _ClassVar[ExampleOrigin]
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_PREDICTION: EventKind
EVENT_KIND_FEEDBACK: EventKind
EVENT_KIND_EXAMPLE: EventKind
EXAMPLE_ORIGIN_UNSPECIFIED: ExampleOrigin
EXAMPLE_ORIGIN_INGESTED: ExampleOrigin
EXAMPLE_ORIGIN_IMPORTED: ExampleOrigin
EXAMPLE_ORIGIN_JOINED: ExampleOrigin

class Event(_message.Message):
    __slots__ = ("sequence", "kind", "model", "key", "time", "prediction", "feedback", "example")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    EXAMPLE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    kind: EventKind
    model: str
    key: str
    time: _timestamp_pb2.Timestamp
    prediction: Prediction
    feedback: Feedback
    example: Example
    def __init__(self, sequence: _Optional[int] = ..., kind: _Optional[_Union[EventKind, str]] = ..., model: _Optional[str] = ..., key: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., prediction: _Optional[_Union[Prediction, _Mapping]] = ..., feedback: _Optional[_Union[Feedback, _Mapping]] = ..., example: _Optional[_Union[Example, _Mapping]] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("request_id", "version", "request", "response", "group", "source", "request_omitted")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_OMITTED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    version: int
    request: bytes
    response: bytes
    group: str
    source: str
    request_omitted: bool
    def __init__(self, request_id: _Optional[str] = ..., version: _Optional[int] = ..., request: _Optional[bytes] = ..., response: _Optional[bytes] = ..., group: _Optional[str] = ..., source: _Optional[str] = ..., request_omitted: _Optional[bool] = ...) -> None: ...

class Feedback(_message.Message):
    __slots__ = ("request_id", "ground_truth", "groups", "observe_time", "source", "group")
    class GroupsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    GROUND_TRUTH_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    OBSERVE_TIME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    ground_truth: _gateway_pb2.Label
    groups: _containers.ScalarMap[str, str]
    observe_time: _timestamp_pb2.Timestamp
    source: str
    group: str
    def __init__(self, request_id: _Optional[str] = ..., ground_truth: _Optional[_Union[_gateway_pb2.Label, _Mapping]] = ..., groups: _Optional[_Mapping[str, str]] = ..., observe_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source: _Optional[str] = ..., group: _Optional[str] = ...) -> None: ...

class Example(_message.Message):
    __slots__ = ("features", "label", "event_time", "origin", "request_id", "version", "correct", "prediction_sequence", "feedback_sequence", "group", "source", "line")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    features: _containers.RepeatedScalarFieldContainer[float]
    label: _gateway_pb2.Label
    event_time: _timestamp_pb2.Timestamp
    origin: ExampleOrigin
    request_id: str
    version: int
    correct: bool
    prediction_sequence: int
    feedback_sequence: int
    group: str
    source: str
    line: int
    def __init__(self, features: _Optional[_Iterable[float]] = ..., label: _Optional[_Union[_gateway_pb2.Label, _Mapping]] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., origin: _Optional[_Union[ExampleOrigin, str]] = ..., request_id: _Optional[str] = ..., version: _Optional[int] = ..., correct: _Optional[bool] = ..., prediction_sequence: _Optional[int] = ..., feedback_sequence: _Optional[int] = ..., group: _Optional[str] = ..., source: _Optional[str] = ..., line: _Optional[int] = ...) -> None: ...
