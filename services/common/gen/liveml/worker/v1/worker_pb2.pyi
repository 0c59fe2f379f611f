from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ForwardRequest(_message.Message):
    __slots__ = ("first_sequence", "requests", "shadow", "authorization")
    FIRST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_FIELD_NUMBER: _ClassVar[int]
    first_sequence: int
    requests: _containers.RepeatedScalarFieldContainer[bytes]
    shadow: bool
    authorization: str
    def __init__(self, first_sequence: _Optional[int] = ..., requests: _Optional[_Iterable[bytes]] = ..., shadow: _Optional[bool] = ..., authorization: _Optional[str] = ...) -> None: ...

class ForwardReply(_message.Message):
    __slots__ = ("sequence", "response")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    response: bytes
    def __init__(self, sequence: _Optional[int] = ..., response: _Optional[bytes] = ...) -> None: ...

class ForwardResponse(_message.Message):
    __slots__ = ("replies",)
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    replies: _containers.RepeatedCompositeFieldContainer[ForwardReply]
    def __init__(self, replies: _Optional[_Iterable[_Union[ForwardReply, _Mapping]]] = ...) -> None: ...
