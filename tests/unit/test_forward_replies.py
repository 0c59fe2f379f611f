"""The worker's reply messages stay small however many large answers complete together."""

from __future__ import annotations

from collections.abc import AsyncIterator

from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.common.gen.liveml.worker.v1 import worker_pb2 as wpb
from services.worker.forward import MAX_REPLY_BYTES, ForwardServicer

ANSWER_BYTES = 1 << 20


async def large_answer(
    request: pb.ModelInferRequest, shadow: bool, within: float | None, traceparent: str
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(id=request.id)
    response.raw_output_contents.append(bytes(ANSWER_BYTES))
    return response


async def test_answers_completing_together_are_split_across_reply_messages() -> None:
    forward = ForwardServicer(large_answer)
    requests = [
        wpb.ForwardedInference(request=pb.ModelInferRequest(id=str(i)).SerializeToString())
        for i in range(12)
    ]

    async def one_message() -> AsyncIterator[wpb.ForwardRequest]:
        yield wpb.ForwardRequest(first_sequence=0, inferences=requests)

    messages = [m async for m in forward.serve(one_message(), "frames")]
    sequences = [r.sequence for m in messages for r in m.replies]
    assert sorted(sequences) == list(range(12))
    sizes = [m.ByteSize() for m in messages]
    assert max(sizes) <= MAX_REPLY_BYTES + ANSWER_BYTES + 1024, sizes
    # Every answer was ready at the first write, so only the limit split them: three
    # 1 MiB answers fit under 4 MiB, a fourth would not.
    assert [len(m.replies) for m in messages] == [3, 3, 3, 3]
