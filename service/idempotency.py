"""`Idempotency-Key`: the same key with the same body returns the same job; another body is a 409.

The first request claims `Keys.idempotency(owner, key)` with SET NX, storing the SHA-256 of its
canonical body and the job id it is about to create. Later requests compare hashes. `Keys.idempotency_of`
maps the job back to its key, so deleting the job frees the key (a later create with it makes a new job).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import redis

from contract.keys import Keys
from service.errors import ApiError

MAX_KEY_LEN = 255

# Delete a claim only while it still names the given job (a newer claim of the same key stays).
_RELEASE = """
local raw = redis.call('GET', KEYS[1])
if raw and cjson.decode(raw)['job_id'] == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('DEL', KEYS[2])
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

    def claim(self, owner: str, key: str, digest: str, job_id: str, ttl_s: int) -> Claim:
        if not key or len(key) > MAX_KEY_LEN:
            raise ApiError(400, "invalid_idempotency_key", f"Idempotency-Key must be 1-{MAX_KEY_LEN} characters",
                           "Idempotency-Key")
        rkey = self.keys.idempotency(owner, key)
        while True:
            if self.r.set(rkey, json.dumps({"hash": digest, "job_id": job_id}), nx=True, ex=ttl_s):
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
        return Claim(str(prior["job_id"]), fresh=False)

    def release(self, owner: str, key: str, job_id: str) -> None:
        """Forget the claim of `job_id` (never created: validation or enqueue failed after claiming)."""
        self._release(keys=[self.keys.idempotency(owner, key), self.keys.idempotency_of(job_id)], args=[job_id])

    def forget_job(self, owner: str, job_id: str) -> None:
        """The job is deleted: its Idempotency-Key, if it had one, is free again."""
        raw = self.r.get(self.keys.idempotency_of(job_id))
        if raw is not None:
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            self.release(owner, key, job_id)
