"""The demo's data: a concept (which label a row of 8 features has) that can shift, files
of labelled rows for `liveml data push`, and clients that call the gateway at a steady
pace and report each answer's true label — the only things the demo puts in."""

from __future__ import annotations

import asyncio
import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from grpc import aio

from services.common import codec
from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.common.gen.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from services.common.gen.liveml.gateway.v1 import gateway_pb2 as gpb
from services.common.gen.liveml.gateway.v1 import gateway_pb2_grpc as gpb_grpc

MODEL = "demo"
WIDTH = 8
INPUT = "x"
COLUMNS = [f"{INPUT}[{i}]" for i in range(WIDTH)]
FLIP = 0.03  # labels wrong at random, as real labels are


@dataclass(frozen=True)
class Concept:
    """y = [x . w > 0], with FLIP of the labels wrong."""

    name: str
    w: npt.NDArray[np.float64]

    def rows(
        self, n: int, rng: np.random.Generator, shuffle: bool = False
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        x = rng.normal(size=(n, WIDTH))
        y = (x @ self.w > 0).astype(np.int64)
        flips = rng.random(n) < FLIP
        y[flips] = 1 - y[flips]
        if shuffle:  # a broken export: the labels no longer belong to their rows
            y = rng.permutation(y)
        return x.astype(np.float32), y


def _turned(a: npt.NDArray[np.float64], other: npt.NDArray[np.float64], degrees: float) -> Any:
    """`a` turned by `degrees` towards `other` (same length)."""
    ortho = other - (other @ a) / (a @ a) * a
    ortho *= np.linalg.norm(a) / np.linalg.norm(ortho)
    angle = np.radians(degrees)
    return np.cos(angle) * a + np.sin(angle) * ortho


def concepts() -> tuple[Concept, Concept, Concept]:
    """The concept of the history file (A0), the live one (A, 30 degrees on: the world
    moved since the history was recorded, so a model of A0 is right ~83% of the time on
    A), and the one it shifts to (B, at right angles to A: a model of A is right half
    the time on it)."""
    rng = np.random.default_rng(11)
    a = rng.normal(size=WIDTH)
    other = rng.normal(size=WIDTH)
    return (
        Concept("A0", _turned(a, other, -30)),
        Concept("A", a),
        Concept("B", _turned(a, other, 90)),
    )


def write_csv(path: Path, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*COLUMNS, "y"])
        for row, label in zip(x, y, strict=True):
            writer.writerow([*(f"{v:.5f}" for v in row), int(label)])
    return path


@dataclass
class Tally:
    answered: int = 0
    correct: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.answered if self.answered else float("nan")


@dataclass
class Traffic:
    """Clients calling the gateway at `rate` requests per second in all; while `labels`
    is on, each answer's true label (by the current concept) goes back as feedback."""

    address: str
    concept: Concept
    clients: int = 24  # each waits for its answer and its feedback's: many, each slow
    rate: float = 80.0
    labels: bool = True
    phase: str = ""
    metadata: tuple[tuple[str, str], ...] = ()  # the client token
    answers: dict[str, int] = field(default_factory=dict)  # by version
    tallies: dict[tuple[str, str], Tally] = field(default_factory=dict)  # (phase, version)
    failures: list[str] = field(default_factory=list)
    feedback_sent: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def _client(self, index: int) -> None:
        rng = np.random.default_rng(100 + index)
        every = self.clients / self.rate
        async with aio.insecure_channel(self.address) as channel:
            infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer  # type: ignore[no-untyped-call]
            feedback = gpb_grpc.GatewayServiceStub(channel).SubmitFeedback  # type: ignore[no-untyped-call]
            n = 0
            next_at = time.monotonic()
            while not self._stop.is_set():
                concept, labels, phase = self.concept, self.labels, self.phase
                x, y = concept.rows(1, rng)
                request = pb.ModelInferRequest(model_name=MODEL, id=f"c{index}-{n}")
                datatype, shape, raw = codec.encode_raw(x)
                request.inputs.add(name=INPUT, datatype=datatype, shape=shape)
                request.raw_input_contents.append(raw)
                n += 1
                try:
                    reply = await infer(request, timeout=10, metadata=self.metadata)
                except aio.AioRpcError as exc:
                    self.failures.append(f"{exc.code().name}: {exc.details()}")
                else:
                    version = reply.model_version
                    self.answers[version] = self.answers.get(version, 0) + 1
                    label = _label(reply)
                    tally = self.tallies.setdefault((phase, version), Tally())
                    tally.answered += 1
                    tally.correct += int(label == int(y[0]))
                    if labels:
                        try:
                            await feedback(
                                gpb.SubmitFeedbackRequest(
                                    model_name=MODEL,
                                    request_id=request.id,
                                    ground_truth=gpb.Label(class_index=int(y[0])),
                                ),
                                timeout=10,
                                metadata=self.metadata,
                            )
                            self.feedback_sent += 1
                        except aio.AioRpcError as exc:
                            self.failures.append(f"feedback {exc.code().name}: {exc.details()}")
                next_at += every
                pause = next_at - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
                else:
                    next_at = time.monotonic()  # behind: no burst to catch up

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(self.clients)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def total(self) -> int:
        return sum(self.answers.values())


def _label(reply: pb.ModelInferResponse) -> int:
    for i, output in enumerate(reply.outputs):
        if output.name == "label":
            values = codec.decode_raw(
                output.name, output.datatype, output.shape, reply.raw_output_contents[i]
            )
            return int(np.asarray(values).reshape(-1)[0])
    raise ValueError("the answer has no 'label' output")


async def ingest(
    address: str,
    concept: Concept,
    n: int,
    seed: int,
    metadata: tuple[tuple[str, str], ...] = (),
) -> int:
    """Labelled examples sent to the gateway (stream ingestion); answered once stored."""
    x, y = concept.rows(n, np.random.default_rng(seed))
    async with aio.insecure_channel(address) as channel:
        stub = gpb_grpc.GatewayServiceStub(channel)  # type: ignore[no-untyped-call]
        reply = await stub.IngestExamples(
            gpb.IngestExamplesRequest(
                model_name=MODEL,
                examples=[
                    gpb.Example(
                        features=row.tolist(),
                        label=gpb.Label(class_index=int(label)),
                        key=f"ingest-{seed}-{i}",
                    )
                    for i, (row, label) in enumerate(zip(x, y, strict=True))
                ],
            ),
            timeout=30,
            metadata=metadata,
        )
    return int(reply.accepted)
