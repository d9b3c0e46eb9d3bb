"""Idempotency-Key claims on a real Redis: replays, conflicts, and a claim left by a creation that never
made its job (Redis lost while giving the key back) being taken over once no creation can be in flight."""

from __future__ import annotations

import uuid

import pytest
import redis

from contract.jobstore import RESERVATION_GRACE_S
from contract.keys import Keys
from service.errors import ApiError
from service.idempotency import Idempotency


@pytest.fixture
def idem():
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    keys = Keys(f"tidem-{uuid.uuid4().hex[:8]}")
    yield Idempotency(client, keys), client, keys
    for k in client.scan_iter(match=f"{keys.prefix}*"):
        client.delete(k)
    client.close()


def test_a_claim_without_its_job_is_in_progress_then_taken_over_after_the_grace(idem):
    ids, client, keys = idem
    t = 1_000_000.0
    assert ids.claim("o", "k", "h1", "video_a", ttl_s=3600, now=t).fresh
    # the creation of video_a is in flight (or failed and could not give the key back): same body waits
    again = ids.claim("o", "k", "h1", "video_b", ttl_s=3600, now=t + 10)
    assert (again.job_id, again.fresh) == ("video_a", False)
    with pytest.raises(ApiError) as err:
        ids.claim("o", "k", "h2", "video_b", ttl_s=3600, now=t + 10)
    assert err.value.code == "idempotency_key_reused"
    # past the grace, video_a never came to exist: the next request owns the key and makes its own job
    late = ids.claim("o", "k", "h1", "video_b", ttl_s=3600, now=t + RESERVATION_GRACE_S + 1)
    assert (late.job_id, late.fresh) == ("video_b", True)
    assert client.get(keys.idempotency_of("video_b")) == b"k"
    assert not client.exists(keys.idempotency_of("video_a"))
    assert 0 < client.ttl(keys.idempotency("o", "k")) <= 3600
    # once video_b exists, its claim is a replay however old
    client.hset(keys.job("video_b"), mapping={"status": "queued"})
    replay = ids.claim("o", "k", "h1", "video_c", ttl_s=3600, now=t + 10 * RESERVATION_GRACE_S)
    assert (replay.job_id, replay.fresh) == ("video_b", False)
