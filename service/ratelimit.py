"""Per-key limits on job creation: a rate (jobs per minute) and a number of unfinished jobs.

The rate is a fixed one-minute window counted with INCR + EXPIRE on `<prefix>:rl:<owner>:<minute>`;
Retry-After is the seconds left in the window. The concurrency limit counts the owner's queued and
in-progress jobs (JobStore's active set) and reserves a slot atomically (a Lua script); Retry-After
then suggests a few poll intervals.
"""

from __future__ import annotations

import math
import time

import redis

from service.errors import ApiError


class RateLimiter:
    def __init__(self, client: redis.Redis, prefix: str, per_minute: int) -> None:
        self.r = client
        self.prefix = prefix
        self.per_minute = per_minute

    def hit(self, owner: str, now: float | None = None) -> None:
        """Count one creation; raise 429 when the owner is over the per-minute budget."""
        now = time.time() if now is None else now
        window = int(now // 60)
        key = f"{self.prefix}:rl:{owner}:{window}"
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


# Add the job id to the owner's active set only while the set is smaller than the limit, atomically,
# so parallel creations cannot overshoot. Returns the set size before the add, or -1 when full.
_RESERVE = """
local n = redis.call('SCARD', KEYS[1])
if n >= tonumber(ARGV[2]) then return -1 end
redis.call('SADD', KEYS[1], ARGV[1])
return n
"""


def reserve_slot(client: redis.Redis, active_key: str, job_id: str, limit: int, retry_after_s: int) -> None:
    """Reserve one of the owner's `limit` concurrent-job slots for `job_id` or raise 429.

    The slot is the job's entry in JobStore's active set, which `JobStore.finish` removes; a caller
    that fails before creating the job must `SREM` it again.
    """
    if int(client.eval(_RESERVE, 1, active_key, job_id, str(limit))) < 0:  # type: ignore[arg-type]
        raise ApiError(
            429, "too_many_active_jobs",
            f"this key already has {limit} queued or running jobs (the limit); wait for one to finish",
            headers={"Retry-After": str(max(1, retry_after_s))},
        )
