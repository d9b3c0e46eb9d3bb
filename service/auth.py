"""API keys: `Authorization: Bearer <key>`, stored only as SHA-256 hex in Redis.

Keys live in the hash `Keys.api_keys()` (sha256 hex -> key id), their names in `Keys.api_key_names()`
(key id -> name). The key id (`key_<12 hex>`) is the job owner: a key lists and reads only its own
jobs (`service.deps.get_principal` checks the header of each request). With `auth.enabled=false`
(allowed only in dev mode by the settings validator) every request acts as owner "dev". `create_api_key(settings, name)` is what `turbovid keys create` calls.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import redis

from contract.keys import Keys, text
from contract.settings import Settings
from service.errors import ApiError


@dataclass(frozen=True)
class Principal:
    owner: str  # key id, or "dev" with auth off


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


class KeyStore:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.r = client
        self.keys = keys

    def create(self, name: str) -> tuple[str, str]:
        """A new key; returns (key id, plaintext). The plaintext is not stored anywhere."""
        plaintext = "tv-" + secrets.token_urlsafe(32)
        key_id = self.add_hash(name, hash_key(plaintext))
        return key_id, plaintext

    def add_hash(self, name: str, sha256_hex: str) -> str:
        """Register an already hashed key (bootstrap keys from settings); returns its key id."""
        sha = sha256_hex.strip().lower()
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ValueError(f"key {name!r}: expected a SHA-256 hex digest")
        key_id = f"key_{sha[:12]}"
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.keys.api_keys(), sha, key_id)
        pipe.hset(self.keys.api_key_names(), key_id, name)
        pipe.execute()
        return key_id

    def resolve(self, plaintext: str) -> str | None:
        raw = self.r.hget(self.keys.api_keys(), hash_key(plaintext))
        if raw is None:
            return None
        return text(raw)


def bearer_token(authorization: str | None) -> str:
    """The key of an `Authorization: Bearer <key>` header; 401 when there is none."""
    challenge = {"WWW-Authenticate": "Bearer"}
    if not authorization:
        raise ApiError(401, "missing_api_key", "send an API key as 'Authorization: Bearer <key>'",
                       headers=challenge)
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "invalid_api_key", "the Authorization header must be 'Bearer <key>'",
                       headers=challenge)
    return token.strip()


def unknown_key() -> ApiError:
    return ApiError(401, "invalid_api_key", "the API key is not valid", headers={"WWW-Authenticate": "Bearer"})


def create_api_key(settings: Settings, name: str) -> str:
    """Create an API key, store its SHA-256 in Redis and return the plaintext (shown once)."""
    client = redis.Redis.from_url(settings.redis.url)
    try:
        _, plaintext = KeyStore(client, Keys(settings.redis.key_prefix)).create(name)
    finally:
        client.close()
    return plaintext
