"""Our `inference` protos are wire-compatible with the public ones tritonclient ships.

The two generated copies of package `inference` cannot share one process (the
protobuf descriptor pool rejects the second), so tritonclient's side runs in a
subprocess and the two sides exchange serialized bytes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.common.gen.inference import model_config_pb2 as mc

TRITON_SIDE = r"""
import json, sys
from google.protobuf import json_format, symbol_database
from tritonclient.grpc import model_config_pb2, service_pb2

def describe(desc):
    return {f.name: [f.number, f.type, f.is_repeated, f.message_type.full_name if f.message_type
            else f.enum_type.full_name if f.enum_type else ""] for f in desc.fields}

def walk(desc, out):
    out[desc.full_name] = describe(desc)
    for nested in desc.nested_types:
        walk(nested, out)

if sys.argv[1] == "describe":
    messages, enums = {"service": {}, "config": {}}, {}
    for part, module in (("service", service_pb2), ("config", model_config_pb2)):
        for desc in module.DESCRIPTOR.message_types_by_name.values():
            walk(desc, messages[part])
        for enum in module.DESCRIPTOR.enum_types_by_name.values():
            enums[enum.full_name] = {v.name: v.number for v in enum.values}
    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    methods = {m.name: [m.input_type.full_name, m.output_type.full_name,
                        m.client_streaming, m.server_streaming] for m in service.methods}
    json.dump({"messages": messages, "enums": enums, "methods": methods}, sys.stdout)
else:
    db = symbol_database.Default()
    results = []
    for case in json.load(sys.stdin):
        cls = db.GetSymbol(case["type"])
        theirs = json_format.Parse(case["json"], cls())
        ours_parsed = cls.FromString(bytes.fromhex(case["bytes"]))
        results.append({"equal": ours_parsed == theirs,
                        "bytes": theirs.SerializeToString(deterministic=True).hex()})
    json.dump(results, sys.stdout)
"""


def triton(mode: str, payload: Any = None) -> Any:
    done = subprocess.run(
        [sys.executable, "-c", TRITON_SIDE, mode],
        input=json.dumps(payload) if payload is not None else "",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def all_messages() -> list[Descriptor]:
    found: list[Descriptor] = []

    def walk(desc: Descriptor) -> None:
        if not desc.GetOptions().map_entry:
            found.append(desc)
        for nested in desc.nested_types:
            walk(nested)

    for module in (pb, mc):
        for desc in module.DESCRIPTOR.message_types_by_name.values():
            walk(desc)
    return found


def scalar(field: FieldDescriptor, k: int) -> Any:
    kind = field.cpp_type
    if kind == FieldDescriptor.CPPTYPE_INT32:
        return -(k + 1) * 1000
    if kind == FieldDescriptor.CPPTYPE_INT64:
        return -(2**40) - k
    if kind == FieldDescriptor.CPPTYPE_UINT32:
        return 2**32 - 1 - k
    if kind == FieldDescriptor.CPPTYPE_UINT64:
        return 2**63 + k
    if kind == FieldDescriptor.CPPTYPE_DOUBLE:
        return 1.5 + k
    if kind == FieldDescriptor.CPPTYPE_FLOAT:
        return 0.25 * (k + 1)
    if kind == FieldDescriptor.CPPTYPE_BOOL:
        return True
    if kind == FieldDescriptor.CPPTYPE_ENUM:
        values = field.enum_type.values
        return values[(k + 1) % len(values)].number
    if field.type == FieldDescriptor.TYPE_BYTES:
        return b"\x00\xff" + bytes([k])
    return f"s{k}é"


def fill(message: Message, k: int, depth: int = 0) -> None:
    """Set every field (one branch of each oneof, chosen by k) to a distinctive value."""
    desc = message.DESCRIPTOR
    chosen = {o.name: o.fields[k % len(o.fields)].name for o in desc.oneofs}
    for field in desc.fields:
        oneof = field.containing_oneof
        if oneof is not None and chosen[oneof.name] != field.name:
            continue
        value = getattr(message, field.name)
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            key = scalar(entry.fields_by_name["key"], k)
            target = entry.fields_by_name["value"]
            if target.message_type is not None:
                fill(value[key], k, depth + 1)
            else:
                value[key] = scalar(target, k)
        elif entry is not None:
            if depth > 4:
                continue
            if field.is_repeated:
                for i in range(2):
                    fill(value.add(), k + i, depth + 1)
            else:
                value.SetInParent()
                fill(value, k, depth + 1)
        elif field.is_repeated:
            value.extend([scalar(field, k), scalar(field, k + 1)])
        else:
            setattr(message, field.name, scalar(field, k))


def _shape(field: FieldDescriptor) -> list[Any]:
    ref = field.message_type or field.enum_type
    return [field.number, field.type, field.is_repeated, ref.full_name if ref else ""]


def test_descriptors_match_tritonclients() -> None:
    theirs = triton("describe")
    ours = {d.full_name: d for d in all_messages()}
    # grpc_service.proto: every message, with exactly the same fields.
    for name, fields in theirs["messages"]["service"].items():
        if name.endswith("Entry"):
            continue
        assert name in ours, f"missing message {name}"
        assert {f.name: _shape(f) for f in ours[name].fields} == fields, f"{name} differs"
    # model_config.proto: the messages we declare carry a subset of the public fields.
    declared = {d.full_name for d in all_messages() if d.file is mc.DESCRIPTOR}
    for name in declared:
        fields = theirs["messages"]["config"][name]
        for field in ours[name].fields:
            assert fields.get(field.name) == _shape(field), f"{name}.{field.name} differs"
    ours_enum = {v.name: v.number for v in mc.DataType.DESCRIPTOR.values}
    assert ours_enum == theirs["enums"]["inference.DataType"]
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    methods = {
        m.name: [
            m.input_type.full_name,
            m.output_type.full_name,
            m.client_streaming,
            m.server_streaming,
        ]
        for m in service.methods
    }
    assert methods == theirs["methods"]
    assert len(methods) == 20


@pytest.mark.parametrize("variant", range(5))
def test_messages_round_trip_through_tritonclient(variant: int) -> None:
    cases, messages = [], []
    for desc in all_messages():
        message = desc._concrete_class()
        fill(message, variant)
        messages.append(message)
        cases.append(
            {
                "type": desc.full_name,
                "json": json_format.MessageToJson(message, preserving_proto_field_name=True),
                "bytes": message.SerializeToString(deterministic=True).hex(),
            }
        )
    results = triton("roundtrip", cases)
    for case, message, result in zip(cases, messages, results, strict=True):
        assert result["equal"], f"{case['type']}: tritonclient parsed our bytes differently"
        theirs = bytes.fromhex(result["bytes"])
        assert type(message).FromString(theirs) == message, (
            f"{case['type']}: we parse theirs differently"
        )
        assert theirs == message.SerializeToString(deterministic=True), case["type"]


def test_infer_request_sample_is_the_same_on_the_wire() -> None:
    request = pb.ModelInferRequest(model_name="m", model_version="2", id="req-1")
    request.parameters["priority"].uint64_param = 3
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    tensor.parameters["binary_data_size"].int64_param = 16
    request.outputs.add(name="y")
    request.raw_input_contents.append(b"\x00" * 16)
    case = {
        "type": "inference.ModelInferRequest",
        "json": json_format.MessageToJson(request, preserving_proto_field_name=True),
        "bytes": request.SerializeToString(deterministic=True).hex(),
    }
    [result] = triton("roundtrip", [case])
    assert result["equal"] and bytes.fromhex(result["bytes"]) == request.SerializeToString(
        deterministic=True
    )
