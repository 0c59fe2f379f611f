"""How many requests a sender should wait for before it sends what it has.

Sending has a cost that requests can share: a gRPC message from the gateway to a
worker (a write, a wake-up and a read in two processes), or one onnxruntime run for a
merged batch (whose code and weights a lone request finds cold in the cache). Waiting
for company is worth it only when company comes: with one client in flight nobody
else can arrive until that client has its answer, and every wait is pure delay.

`Gather` learns how many requests arrive together and waits, at most `hold` seconds,
until that many are there. It starts at one (send at once). Now and then it probes:
it waits the whole hold to see how many come. A probe that gathers more sets the
target; one that gathers nothing makes the next probe wait twice as long (up to
`MAX_SPACING` sends), so a sender that has no company pays one hold in thousands of
sends. A wait that times out with fewer requests lowers the target to what came; more
requests queued than the target raise it.
"""

from __future__ import annotations

FIRST_SPACING = 16  # sends between the first probes
MAX_SPACING = 4096  # sends between probes when probes keep finding nobody


class Gather:
    def __init__(self, hold: float, most: int) -> None:
        self.hold = hold
        self.most = max(1, most)
        self.target = 1
        self.probing = False
        self._spacing = FIRST_SPACING
        self._until_probe = FIRST_SPACING

    def waits(self) -> bool:
        """Whether the next send would wait for company (without counting it as a send)."""
        return self.hold > 0 and self.most > 1 and (self.target > 1 or self._until_probe <= 1)

    def wanted(self) -> int:
        """How many requests to wait for before sending (1: send what is there now)."""
        if self.hold <= 0 or self.most == 1:
            return 1
        self._until_probe -= 1
        if self._until_probe > 0:
            return self.target
        self.probing = True
        return self.most

    def sent(self, count: int, timed_out: bool) -> None:
        """Learn from one send of `count` requests (`timed_out`: the hold ran out first)."""
        if self.probing:
            self.probing = False
            if count > 1:
                self.target = min(count, self.most)
                self._spacing = FIRST_SPACING
            else:
                self._spacing = min(self._spacing * 2, MAX_SPACING)
            self._until_probe = self._spacing
        elif timed_out:
            self.target = max(1, count)
            if self.target == 1:
                self._until_probe = self._spacing
        elif count > self.target:
            self.target = min(count, self.most)
