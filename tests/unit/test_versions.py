"""The V2 model_version string, as the gateway and the worker read it."""

from __future__ import annotations

import grpc
import pytest

from services.common.errors import ServiceError
from services.dataplane import versions


def test_a_number_names_a_version_and_anything_else_is_refused() -> None:
    assert versions.number("3") == 3
    with pytest.raises(ServiceError) as refused:
        versions.number("latest")
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.message == (
        "model version must be a positive integer or empty, got 'latest'"
    )
