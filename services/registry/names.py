"""What every registry RPC reads from a caller, checked in one place: resource names
(`models/iris/versions/3`), page tokens and sizes, durations and counts. Each refusal
is INVALID_ARGUMENT naming the field and what was expected. Paging lives here too:
the token a page hands out is what the next request's `page_token` is read back as."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.errors import InvalidArgument
from services.common.ids import ID

# Numbers are stored as 64-bit integers (SQLite and PostgreSQL alike).
INT64_MAX = 2**63 - 1
# The longest duration any request field may carry (10 years, well inside int64 µs).
MAX_SECONDS = 10 * 366 * 86400.0


def check_id(kind: str, value: str) -> str:
    if not ID.fullmatch(value):
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
        number = positive_number(parts[3])
        if number is None:
            raise InvalidArgument(
                f"version number must be a positive integer (at most {INT64_MAX}), got {parts[3]!r}"
            )
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


def positive_number(text: str) -> int | None:
    """`text` as a number 1..INT64_MAX (plain decimal digits), else None."""
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        return None
    number = int(text)
    return number if 1 <= number <= INT64_MAX else None


def seconds(duration: Any, field: str, *, most: float = MAX_SECONDS) -> float:
    """A google.protobuf.Duration field as seconds, 0 (unset) to `most`."""
    value: float = duration.ToNanoseconds() / 1e9
    if not 0 <= value <= most:
        raise InvalidArgument(f"{field} must be within [0, {most:.0f}] s, got {value:g} s")
    return value


# The range google.protobuf.Timestamp allows: 0001-01-01 to 9999-12-31.
_FIRST_SECOND, _LAST_SECOND = -62135596800, 253402300799


def timestamp(value: Any, field: str) -> None:
    """A google.protobuf.Timestamp a caller sent: within the range the type allows."""
    if not _FIRST_SECOND <= value.seconds <= _LAST_SECOND or not 0 <= value.nanos < 10**9:
        raise InvalidArgument(
            f"{field} must be a valid timestamp (years 1-9999, nanos 0-999999999)"
        )


def count(value: int | float, field: str) -> None:
    """A count a caller reports: never negative."""
    if value < 0:
        raise InvalidArgument(f"{field} must not be negative, got {value:g}")


# --- paging: a token carries the last key of the previous page, opaque to callers


def encode_page(key: str | int) -> str:
    return base64.urlsafe_b64encode(str(key).encode()).decode()


def decode_page(token: str) -> str:
    try:
        return base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode()
    except ValueError:
        raise InvalidArgument(
            "page_token is not one this server issued: pass the next_page_token of "
            "the previous page, or none for the first"
        ) from None


def decode_page_number(token: str) -> int:
    """A page token that carries a row number (the last one of the previous page)."""
    number = positive_number(decode_page(token))
    if number is None:
        raise InvalidArgument(
            "page_token is not one this server issued: pass the next_page_token of "
            "the previous page, or none for the first"
        )
    return number


async def page(
    session: AsyncSession, query: Select[Any], size: int, key: Callable[[Any], str | int]
) -> tuple[list[Any], str]:
    """One page of `query` (already ordered and filtered past the previous page's key):
    its rows, and the token of the next page ("" when this is the last)."""
    # One row past the page says whether another follows, without counting the rest.
    rows = list((await session.execute(query.limit(size + 1))).scalars().all())
    more = len(rows) > size
    rows = rows[:size]
    return rows, encode_page(key(rows[-1])) if more else ""


def page_size(requested: int, default: int = 50, limit: int = 1000) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative")
    return min(requested or default, limit)
