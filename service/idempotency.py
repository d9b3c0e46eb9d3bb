"""`Idempotency-Key`: the same key with the same body returns the same job; another body is a 409.

The first request claims `Keys.idempotency(owner, key)` with SET NX, storing the SHA-256 of its
canonical body and the job id it is about to create. Later requests compare hashes. `Keys.idempotency_of`
maps the job back to its key, so deleting the job frees the key (a later create with it makes a new job).

A claim whose job was never made — its creation failed and could not give the key back because Redis was
unreachable — is taken over by the next request with the same body once it is older than
`RESERVATION_GRACE_S` (no creation in flight takes that long); a younger one is answered 409
`idempotency_in_progress`.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import redis

from contract.jobstore import RESERVATION_GRACE_S
from contract.keys import Keys, text
from service.errors import ApiError

MAX_KEY_LEN = 255

# Delete a claim only while it still names the given job (a newer claim of the same key stays).
_RELEASE = """
local raw = redis.call('GET', KEYS[1])
if raw and cjson.decode(raw)['job_id'] == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('DEL', KEYS[2])
return 1
"""
# Take over a claim only while it still names the abandoned job (another request may have taken it first):
# the claim and the new job's back-reference are set, the abandoned job's back-reference dropped.
_TAKE_OVER = """
local raw = redis.call('GET', KEYS[1])
if not raw or cjson.decode(raw)['job_id'] ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[3])
redis.call('DEL', KEYS[3])
return 1
"""


@dataclass(frozen=True)
class Claim:
    job_id: str
    fresh: bool  # True: this request owns the key and must create the job


def body_hash(body: dict[str, Any], image_bytes: bytes | None) -> str:
    h = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode())
    if image_bytes is not None:
        h.update(b"\0image\0")
        h.update(hashlib.sha256(image_bytes).digest())
    return h.hexdigest()


class Idempotency:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.r = client
        self.keys = keys
        self._release = client.register_script(_RELEASE)
        self._take_over = client.register_script(_TAKE_OVER)

    def claim(self, owner: str, key: str, digest: str, job_id: str, ttl_s: int, *,
              now: float | None = None) -> Claim:
        if not key or len(key) > MAX_KEY_LEN:
            raise ApiError(400, "invalid_idempotency_key", f"Idempotency-Key must be 1-{MAX_KEY_LEN} characters",
                           "Idempotency-Key")
        now = time.time() if now is None else now
        rkey = self.keys.idempotency(owner, key)
        value = json.dumps({"hash": digest, "job_id": job_id, "at": now})
        while True:
            if self.r.set(rkey, value, nx=True, ex=ttl_s):
                self.r.set(self.keys.idempotency_of(job_id), key, ex=ttl_s)
                return Claim(job_id, fresh=True)
            raw = self.r.get(rkey)
            if raw is not None:
                break
            # expired between the two calls: claim again
        prior = json.loads(raw)  # type: ignore[arg-type]
        if prior["hash"] != digest:
            raise ApiError(409, "idempotency_key_reused",
                           "this Idempotency-Key was already used with a different request body",
                           "Idempotency-Key")
        prior_id = str(prior["job_id"])
        abandoned = (now - float(prior.get("at", 0)) > RESERVATION_GRACE_S
                     and not self.r.exists(self.keys.job(prior_id)))
        if abandoned and self._take_over(keys=[rkey, self.keys.idempotency_of(job_id),
                                               self.keys.idempotency_of(prior_id)],
                                         args=[prior_id, value, ttl_s, key]):
            return Claim(job_id, fresh=True)
        return Claim(prior_id, fresh=False)

    def release(self, owner: str, key: str, job_id: str) -> None:
        """Forget the claim of `job_id` (never created: validation or enqueue failed after claiming)."""
        self._release(keys=[self.keys.idempotency(owner, key), self.keys.idempotency_of(job_id)], args=[job_id])

    def forget_job(self, owner: str, job_id: str) -> None:
        """The job is deleted: its Idempotency-Key, if it had one, is free again."""
        raw = self.r.get(self.keys.idempotency_of(job_id))
        if raw is not None:
            key = text(raw)
            self.release(owner, key, job_id)
