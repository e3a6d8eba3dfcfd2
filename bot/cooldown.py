"""Per-member cooldown of a costly command: one start per member per interval, refused in plain words.

In memory, per bot process: a restart forgets it, which costs at most one extra start.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class MemberCooldown:
    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self._started: dict[int, float] = {}

    def wait_s(self, member_id: int) -> int:
        """Whole seconds until the member may start again (0: now)."""
        started = self._started.get(member_id)
        if started is None:
            return 0
        return max(0, math.ceil(started + self.seconds - self.clock()))

    def start(self, member_id: int) -> None:
        """Record a start now; entries past their interval are dropped, so the map holds only waiting members."""
        now = self.clock()
        self._started = {member: at for member, at in self._started.items() if at + self.seconds > now}
        if self.seconds > 0:
            self._started[member_id] = now
