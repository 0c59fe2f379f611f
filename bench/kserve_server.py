"""KServe's Python ModelServer serving the benchmark ONNX file (run in its own venv).

The model class is the straightforward one a KServe user writes: decode the V2
request, run onnxruntime, encode the answer.
"""

from __future__ import annotations

import sys

import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class OnnxModel(Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.ready = True

    def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None
    ) -> InferResponse:
        x = payload.inputs[0].as_numpy()
        y = self.session.run(None, {"x": x})[0]
        output = InferOutput(name="y", shape=list(y.shape), datatype="FP32")
        output.set_data_from_numpy(y, binary_data=True)
        return InferResponse(model_name=self.name, infer_outputs=[output], response_id=payload.id)


if __name__ == "__main__":
    path, grpc_port, http_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    ModelServer(grpc_port=grpc_port, http_port=http_port, workers=1).start([OnnxModel("mlp", path)])
