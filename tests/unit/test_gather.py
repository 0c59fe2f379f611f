"""Gather: waits for company only where company comes."""

from __future__ import annotations

from services.dataplane.gather import FIRST_SPACING, MAX_SPACING, Gather


def send(gather: Gather, arriving: int) -> int:
    """One send where `arriving` requests come within the hold; returns how many went."""
    wanted = gather.wanted()
    count = min(max(wanted, 1), arriving) if wanted > 1 else 1
    gather.sent(count, timed_out=wanted > count)
    return wanted


def test_a_lone_client_is_almost_never_held() -> None:
    gather = Gather(hold=0.002, most=256)
    held = sum(send(gather, 1) > 1 for _ in range(100_000))
    # Probes come ever more rarely: 16, 32, 64 … sends apart, at most MAX_SPACING.
    assert held <= 9 + 100_000 // MAX_SPACING
    assert gather.target == 1


def test_company_is_found_by_a_probe_and_followed() -> None:
    gather = Gather(hold=0.002, most=256)
    wanted = [send(gather, 8) for _ in range(FIRST_SPACING + 3)]
    assert wanted[: FIRST_SPACING - 1] == [1] * (FIRST_SPACING - 1)
    assert wanted[FIRST_SPACING - 1] == 256  # the probe
    assert wanted[FIRST_SPACING:] == [8, 8, 8] and gather.target == 8
    gather.sent(3, timed_out=True)  # fewer came within the hold: expect fewer
    assert gather.wanted() == 3
    gather.sent(12, timed_out=False)  # more were already queued: expect more
    assert gather.wanted() == 12
    gather.sent(1, timed_out=True)  # alone again: send at once until the next probe
    assert gather.wanted() == 1


def test_no_hold_or_no_room_never_waits() -> None:
    for gather in (Gather(hold=0, most=256), Gather(hold=0.002, most=1)):
        assert all(send(gather, 8) == 1 for _ in range(10_000))
