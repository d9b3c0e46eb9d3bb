"""`Idempotency-Key`: the same key with the same body returns the same job; another body is a 409.

The first request claims `Keys.idempotency(owner, key)` with SET NX, storing the SHA-256 of its
canonical body and the job id it is about to create. Later requests compare hashes.
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

    def claim(self, owner: str, key: str, digest: str, job_id: str, ttl_s: int) -> Claim:
        if not key or len(key) > MAX_KEY_LEN:
            raise ApiError(400, "invalid_idempotency_key", f"Idempotency-Key must be 1-{MAX_KEY_LEN} characters",
                           "Idempotency-Key")
        rkey = self.keys.idempotency(owner, key)
        while True:
            if self.r.set(rkey, json.dumps({"hash": digest, "job_id": job_id}), nx=True, ex=ttl_s):
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

    def release(self, owner: str, key: str) -> None:
        """Forget a claim whose job was never created (validation or enqueue failed after claiming)."""
        self.r.delete(self.keys.idempotency(owner, key))
