"""Resource names of the registry API (`models/iris/versions/3`) and page tokens."""

from __future__ import annotations

import base64
import re

from services.common.errors import InvalidArgument

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_id(kind: str, value: str) -> str:
    if not _ID.fullmatch(value):
        raise InvalidArgument(
            f"{kind} id {value!r} is not valid: use 1-128 letters, digits, '_', '.', '-', "
            "starting with a letter or digit"
        )
    return value


def model(name: str) -> str:
    """`models/{model}` -> model id."""
    parts = name.split("/")
    if len(parts) != 2 or parts[0] != "models" or not parts[1]:
        raise InvalidArgument(f"expected a model name like 'models/iris', got {name!r}")
    return parts[1]


def version(name: str) -> tuple[str, int | str]:
    """`models/{m}/versions/{n}` -> (m, n); `models/{m}/aliases/{a}` -> (m, a)."""
    parts = name.split("/")
    if len(parts) == 4 and parts[0] == "models" and parts[2] == "versions":
        try:
            number = int(parts[3])
        except ValueError:
            number = -1
        if number < 1:
            raise InvalidArgument(f"version number must be a positive integer, got {parts[3]!r}")
        return parts[1], number
    if len(parts) == 4 and parts[0] == "models" and parts[2] == "aliases" and parts[3]:
        return parts[1], parts[3]
    raise InvalidArgument(
        f"expected a version name like 'models/iris/versions/3' or "
        f"'models/iris/aliases/champion', got {name!r}"
    )


def rollout(name: str) -> str:
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != "models" or parts[2] != "rollout" or not parts[1]:
        raise InvalidArgument(f"expected a rollout name like 'models/iris/rollout', got {name!r}")
    return parts[1]


def simple(kind: str, name: str) -> str:
    """`{kind}/{id}` -> id (`workers/abc`, `tokens/abc`); a bare id is accepted too."""
    if "/" not in name and name:
        return name
    parts = name.split("/")
    if len(parts) != 2 or parts[0] != kind or not parts[1]:
        raise InvalidArgument(f"expected a name like '{kind}/ID', got {name!r}")
    return parts[1]


def version_name(model_id: str, number: int) -> str:
    return f"models/{model_id}/versions/{number}"


def encode_page(key: str | int) -> str:
    return base64.urlsafe_b64encode(str(key).encode()).decode()


def decode_page(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except ValueError:
        raise InvalidArgument("page_token is not one this server issued") from None


def page_size(requested: int, default: int = 50, limit: int = 1000) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative")
    return min(requested or default, limit)
