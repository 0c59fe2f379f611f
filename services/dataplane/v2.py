"""What liveml's V2 inference service offers, the same on a worker and on a gateway.

Clients should not be able to tell the two apart: both announce the same extensions
and answer the Triton methods liveml does not offer with the same explanation.
"""

from __future__ import annotations

# The parameter of a failed answer on a ModelStreamInfer stream that holds its gRPC
# status code (int64): V2's stream answers carry only the error's text.
STATUS = "liveml_status"

EXTENSIONS = ("model_configuration", "statistics", "model_repository(index)")

NOT_OFFERED = (
    "not supported by liveml: models are loaded through the registry's rollouts "
    "(or the --model-dir folder) and tensors travel in the request"
)
NOT_OFFERED_METHODS = (
    "RepositoryModelLoad",
    "RepositoryModelUnload",
    "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister",
    "CudaSharedMemoryUnregister",
    "TraceSetting",
    "LogSettings",
)
