"""Webhook signatures (Standard Webhooks) as the deliverer signs them and receivers verify them."""

from __future__ import annotations

import time

from service.webhooks import sign, verify


def test_signature_matches_the_standard_webhooks_test_vector() -> None:
    sig = sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
               '{"test": 2432232314}')
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_verify_checks_secret_body_and_age() -> None:
    secret, body, now = "whsec_dGVzdHNlY3JldA==", '{"a":1}', int(time.time())
    headers = {"webhook-id": "evt_1", "webhook-timestamp": str(now),
               "webhook-signature": sign(secret, "evt_1", now, body)}
    assert verify(secret, headers, body)
    assert not verify("whsec_b3RoZXI=", headers, body)
    assert not verify(secret, headers, body + " ")
    old = {**headers, "webhook-timestamp": str(now - 600), "webhook-signature": sign(secret, "evt_1", now - 600, body)}
    assert not verify(secret, old, body)
