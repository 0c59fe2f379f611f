"""The registry's database away or busy, as its callers see it: UNAVAILABLE with the
driver's reason and "retry", not UNKNOWN with a driver exception's class name.

`Store.read`, `Store.write` and the event log's transactions run inside `away()`, so
every RPC that reaches the database answers this way while PostgreSQL restarts, fails
over or refuses connections, or SQLite stays locked past its busy timeout; a client
(a worker's heartbeat, a gateway's watch, the CLI) retries UNAVAILABLE as it does a
registry that is away. Only connection-level failures are translated: a constraint or
a programming error stays what it is. The message names the driver's error, never the
SQL or its parameters (they can hold secrets' digests).
"""

from __future__ import annotations

import socket
from types import TracebackType

from sqlalchemy import exc as sa

from services.common.errors import Unavailable

# What the drivers raise when the server cannot be reached or the session was lost:
# SQLAlchemy's wrappers, and asyncpg's own connect errors, which it lets through
# unwrapped (a refused or reset socket, a host that does not resolve, a connect that
# timed out).
_AWAY: tuple[type[BaseException], ...] = (
    sa.OperationalError,
    sa.InterfaceError,
    sa.TimeoutError,  # the connection pool: every connection in use past pool_timeout
    ConnectionError,
    socket.gaierror,
    TimeoutError,
)


def reason(exc: BaseException) -> str:
    """The driver's own words, first line only (SQLAlchemy appends the SQL)."""
    inner = exc.orig if isinstance(exc, sa.DBAPIError) and exc.orig is not None else exc
    cause = inner.__cause__ if inner.__cause__ is not None else inner
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0][:200]}" if lines else type(cause).__name__


class away:  # lower case: used as `with away():`, like contextlib's helpers
    """Turn a lost database into Unavailable (cheap: no generator, nothing on success)."""

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        if exc is not None and (
            isinstance(exc, _AWAY) or (isinstance(exc, sa.DBAPIError) and _lost(exc))
        ):
            raise Unavailable(
                f"the registry's database is unreachable or busy ({reason(exc)}); "
                "retry when it is back"
            ) from exc
        return None


# SQLSTATE classes that mean the server, not the statement: connection exception,
# operator intervention (shutdown, "cannot connect now"), insufficient resources
# (too many connections).
_SERVER_CLASSES = ("08", "57", "53")


def _lost(exc: sa.DBAPIError) -> bool:
    """A wrapped driver error of the connection, not of a statement: raised while
    connecting (no statement: e.g. a database not accepting connections), one that
    invalidated the connection, or one of the server's SQLSTATE classes above."""
    if exc.statement is None or exc.connection_invalidated:
        return True
    state = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return isinstance(state, str) and state[:2] in _SERVER_CLASSES
