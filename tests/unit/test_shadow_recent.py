"""The shadow process forgets workers no copy has named for a while, and their links."""

from __future__ import annotations

from services.gateway.links import Connector
from services.gateway.shadow import Copy
from services.gateway.shadow_process import IDLE_SECONDS, Recent
from services.gateway.upstream import UpstreamPool


def copy(*workers: tuple[str, str]) -> Copy:
    return Copy("m", 2, b"", b"", workers, 0.0)


async def test_workers_named_by_no_recent_copy_are_forgotten_unless_busy() -> None:
    connector = Connector(None, None, None, 4 << 20, lambda address: None)
    pool = UpstreamPool(connector.links)
    recent = Recent()
    recent.note(copy(("w1:1", "w1:2"), ("w2:1", "")), now=0.0)
    recent.note(copy(("w3:1", "w3:2")), now=0.0)
    recent.note(copy(("w2:1", "w2:2")), now=IDLE_SECONDS / 2)
    for address in ("w1:1", "w2:1", "w3:1"):
        pool.get(address)
    pool.get("w3:1").outstanding = 1  # a copy still on its way there

    await recent.prune(pool, now=IDLE_SECONDS + 1)

    assert set(recent.seen) == {"w2:1"}
    assert recent.forward == {"w2:1": "w2:2", "w3:1": "w3:2"}
    assert pool.busy() == {"w3:1"}
    assert set(pool._upstreams) == {"w2:1", "w3:1"}
    await pool.close()
