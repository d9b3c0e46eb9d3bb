"""Per-key rate limit on job creation: a fixed one-minute window counted with INCR + EXPIRE on
`Keys.rate(owner, minute)`; Retry-After is the seconds left in the window.

The other per-key limit, concurrent (queued + running) jobs, is a slot in the owner's active set:
`JobStore.reserve_slot` / `release_slot`, reached through the engine.
"""

from __future__ import annotations

import math
import time

import redis

from contract.keys import Keys
from service.errors import ApiError


class RateLimiter:
    def __init__(self, client: redis.Redis, keys: Keys, per_minute: int) -> None:
        self.r = client
        self.keys = keys
        self.per_minute = per_minute

    def hit(self, owner: str, now: float | None = None) -> None:
        """Count one creation; raise 429 when the owner is over the per-minute budget."""
        now = time.time() if now is None else now
        window = int(now // 60)
        key = self.keys.rate(owner, window)
        pipe = self.r.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, 61)
        count = int(pipe.execute()[0])
        if count > self.per_minute:
            retry_after = max(1, math.ceil((window + 1) * 60 - now))
            raise ApiError(
                429, "rate_limit_exceeded",
                f"more than {self.per_minute} video creations per minute for this key; retry in {retry_after}s",
                headers={"Retry-After": str(retry_after)},
            )
