"""Shared benchmark machinery: gRPC bodies for h2load, running it, and reading its log.

h2load (Debian's nghttp2-client) is a C HTTP/2 load generator; it sends a fixed
body, so a gRPC request is framed by hand (1 flag byte, 4-byte big-endian length,
the message). It counts any HTTP 200 as success even when the gRPC status in the
trailers is an error, so every run is checked with a real client as well.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from grpc import aio

from services.common import codec
from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.common.gen.inference import grpc_predict_v2_pb2_grpc as pb_grpc

SERVER_CORE, CLIENT_CORE = "0", "1"


def frame(message: bytes) -> bytes:
    return struct.pack(">?I", False, len(message)) + message


def mlp_request(model: str = "mlp", n_in: int = 64, seed: int = 0) -> pb.ModelInferRequest:
    x = np.random.default_rng(seed).standard_normal((1, n_in)).astype(np.float32)
    request = pb.ModelInferRequest(model_name=model)
    datatype, shape, raw = codec.encode_raw(x)
    request.inputs.add(name="x", datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw)
    return request


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], within: float = 60) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"port {port} did not open")


def pinned(core: str, args: list[str]) -> list[str]:
    return (
        ["taskset", "-c", core, *args]
        if shutil.which("taskset") and os.cpu_count() and os.cpu_count() >= 2
        else args
    )  # type: ignore[operator]


@dataclass
class Result:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    # Each request's (or streamed message's) latency, for pooling runs' samples.
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def h2load(
    port: int,
    method: str,
    body: bytes,
    in_flight: int,
    seconds: float,
    messages: int = 1,
    headers: tuple[str, ...] = (),
) -> Result:
    """Drive `method` with `in_flight` concurrent streams for `seconds`; `messages` per stream."""
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "body"
        data.write_bytes(body)
        log = Path(scratch) / "log"
        args = [
            "h2load",
            "-c",
            "1",
            "-m",
            str(in_flight),
            "-D",
            f"{seconds:g}",
            "-t",
            "1",
            "--warm-up-time",
            "1",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            *(arg for header in headers for arg in ("-H", header)),
            "-d",
            str(data),
            "--log-file",
            str(log),
            f"http://127.0.0.1:{port}/inference.GRPCInferenceService/{method}",
        ]
        done = subprocess.run(
            pinned(CLIENT_CORE, args), capture_output=True, text=True, timeout=seconds + 60
        )
        if done.returncode != 0:
            raise RuntimeError(f"h2load failed: {done.stdout}\n{done.stderr}")
        rows = [line.split("\t") for line in log.read_text().splitlines() if line]
    ok = [int(r[2]) for r in rows if r[1] == "200"]
    if not ok:
        raise RuntimeError(f"no successful requests: {done.stdout}")
    starts = [int(r[0]) for r in rows if r[1] == "200"]
    span = (max(s + d for s, d in zip(starts, ok, strict=True)) - min(starts)) / 1e6
    per_message = [d / messages / 1000 for d in ok]
    quantiles = (
        statistics.quantiles(per_message, n=100) if len(per_message) > 1 else per_message * 99
    )
    return Result(len(ok) * messages, span, quantiles[49], quantiles[98], per_message)


async def check_with_client(
    port: int, request: pb.ModelInferRequest, expect_model_version: str | None = None
) -> None:
    """h2load counts gRPC errors as successes: prove a real client gets a real answer."""
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    if not reply.raw_output_contents or (
        expect_model_version and reply.model_version != expect_model_version
    ):
        raise RuntimeError(f"bad sample reply from port {port}: {reply}")
