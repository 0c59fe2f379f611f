"""The V2 `model_version` string: empty (let the rollout decide) or a version number."""

from __future__ import annotations

from services.common.errors import InvalidArgument


def number(version: str) -> int:
    """The version a non-empty `model_version` names; INVALID_ARGUMENT if it names none."""
    try:
        return int(version)
    except ValueError:
        raise InvalidArgument(
            f"model version must be a positive integer or empty, got {version!r}"
        ) from None
