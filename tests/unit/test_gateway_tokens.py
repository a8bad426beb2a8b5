"""Kept: the gateway checks a token by its hash, in constant time, for the one model API it
belongs to. (Constant time cannot be measured without timing asserts, so the test checks that
the comparison goes through hmac.compare_digest with the hashes, and nowhere else.)"""

from __future__ import annotations

import hmac

import pytest

from pier.events import RouteRecord, TokenRecord, new_token, token_hash
from services.gateway import auth
from services.gateway.auth import Authenticator
from services.gateway.table import Table


def _table(*tokens: tuple[str, str, str]) -> Table:
    table = Table()
    for prefix, model_id, secret in tokens:
        table.tokens[prefix] = TokenRecord(prefix=prefix, model_id=model_id, hash=token_hash(secret), revoked=False)
    return table


def test_a_token_opens_only_its_own_model_api_and_is_compared_by_hash_in_constant_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret, prefix = new_token()
    checker = Authenticator(_table((prefix, "mine", secret)))
    compared: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    mine = RouteRecord(model_id="mine", name="mine", access="restricted")
    other = RouteRecord(model_id="other", name="other", access="restricted")
    assert checker.check(mine, f"Bearer {secret}")
    assert compared == [(token_hash(secret), token_hash(secret))]  # hashes, never the secret itself
    assert not checker.check(other, f"Bearer {secret}")  # one model API each
    assert not checker.check(mine, f"Bearer {secret[:-1]}x")
    assert not checker.check(mine, None)
