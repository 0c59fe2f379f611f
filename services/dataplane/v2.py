"""What liveml's V2 inference service offers, the same on a worker and on a gateway.

Clients should not be able to tell the two apart: both announce the same extensions
and answer the Triton methods liveml does not offer with the same explanation.
"""

from __future__ import annotations

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
