"""The token bucket and token verification (pure)."""

from __future__ import annotations

import time
import warnings

import jwt
import pytest

from server.auth import verify
from server.errors import Forbidden, Unauthenticated
from server.ratelimit import RateLimiter
from stateshift.tokens import mint_token
from tests.support import TEST_SECRET


def test_the_bucket_allows_the_burst_then_refuses_with_a_retry_delay():
    limiter = RateLimiter(rate=50, burst=100, now=0.0)
    assert all(limiter.take(0.0) == 0 for _ in range(100))
    assert limiter.take(0.0) == 20  # one token takes 1/50 s
    assert limiter.take(0.02) == 0  # refilled


def test_more_than_the_abuse_limit_of_refusals_within_the_window_is_abuse():
    limiter = RateLimiter(rate=1, burst=1, now=0.0, abuse_limit=3, abuse_window=10)
    limiter.take(0.0)
    for _ in range(3):
        assert limiter.take(0.1) > 0
    assert not limiter.abusive(0.1)
    limiter.take(0.1)
    assert limiter.abusive(0.1)


def test_refusals_spread_over_more_than_the_window_are_not_abuse():
    limiter = RateLimiter(rate=0.001, burst=1, now=0.0, abuse_limit=3, abuse_window=10)
    limiter.take(0.0)
    for moment in (0.0, 4.0, 8.0, 12.0):
        limiter.take(moment)
    assert not limiter.abusive(12.0)


def token(**claims: object) -> str:
    base: dict[str, object] = {
        "sub": "alice",
        "role": "player",
        "games": ["g1"],
        "exp": int(time.time()) + 60,
    }
    base.update(claims)
    return jwt.encode({k: v for k, v in base.items() if v is not None}, TEST_SECRET)


def hs512() -> str:
    """A token signed with the right secret but another algorithm."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT warns that the key is short for SHA-512
        return jwt.encode(
            {"sub": "alice", "role": "player", "games": ["*"], "exp": 2**40},
            TEST_SECRET,
            algorithm="HS512",
        )


def test_a_valid_player_token_opens_its_game():
    claims = verify(mint_token(TEST_SECRET, "alice", "player", ["g1"]), TEST_SECRET, "g1")
    assert (claims.sub, claims.role) == ("alice", "player")


@pytest.mark.parametrize(
    "bad",
    [
        None,
        "",
        "not-a-jwt",
        token(exp=int(time.time()) - 5),
        token(exp=None),
        token(sub=None),
        token(role=None),
        token(role="god"),
        token(role=["player"]),  # ill-typed claims: refused, not a server error (note 8)
        token(role={"player": 1}),
        token(sub="bad id"),
        token(games=None),
        token(games="g1"),
        jwt.encode({"sub": "alice", "role": "player", "games": ["*"], "exp": 2**40}, "x" * 32),
        hs512(),
        jwt.encode(
            {"sub": "alice", "role": "player", "games": ["*"], "exp": 2**40},
            None,
            algorithm="none",
        ),
    ],
)
def test_bad_tokens_are_unauthenticated(bad):
    with pytest.raises(Unauthenticated):
        verify(bad, TEST_SECRET, "g1")


def test_a_game_outside_the_claim_and_a_non_admin_on_the_admin_path_are_forbidden():
    with pytest.raises(Forbidden):
        verify(token(), TEST_SECRET, "g2")
    with pytest.raises(Forbidden):
        verify(token(), TEST_SECRET, None)


def test_admin_path_ignores_games_and_star_opens_every_game():
    assert verify(token(role="admin", games=None), TEST_SECRET, None).role == "admin"
    assert verify(token(games=["*"]), TEST_SECRET, "anything").sub == "alice"


def test_a_claim_the_protocol_does_not_know_is_not_a_reason_to_refuse():
    """The old server ignores `aud` (PyJWT refuses a token with one unless told not to):
    one client token must open both servers during the parallel run."""
    assert verify(token(aud="games.example"), TEST_SECRET, "g1").sub == "alice"
