import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ForwardRequest(_message.Message):
    __slots__ = ("first_sequence", "shadow", "authorization", "inferences")
    FIRST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_FIELD_NUMBER: _ClassVar[int]
    INFERENCES_FIELD_NUMBER: _ClassVar[int]
    first_sequence: int
    shadow: bool
    authorization: str
    inferences: _containers.RepeatedCompositeFieldContainer[ForwardedInference]
    def __init__(self, first_sequence: _Optional[int] = ..., shadow: _Optional[bool] = ..., authorization: _Optional[str] = ..., inferences: _Optional[_Iterable[_Union[ForwardedInference, _Mapping]]] = ...) -> None: ...

class ForwardedInference(_message.Message):
    __slots__ = ("request", "version", "timeout", "traceparent")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    request: bytes
    version: int
    timeout: _duration_pb2.Duration
    traceparent: str
    def __init__(self, request: _Optional[bytes] = ..., version: _Optional[int] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., traceparent: _Optional[str] = ...) -> None: ...

class ForwardReply(_message.Message):
    __slots__ = ("sequence", "response", "code", "message")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    response: bytes
    code: int
    message: str
    def __init__(self, sequence: _Optional[int] = ..., response: _Optional[bytes] = ..., code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ForwardResponse(_message.Message):
    __slots__ = ("replies",)
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    replies: _containers.RepeatedCompositeFieldContainer[ForwardReply]
    def __init__(self, replies: _Optional[_Iterable[_Union[ForwardReply, _Mapping]]] = ...) -> None: ...
