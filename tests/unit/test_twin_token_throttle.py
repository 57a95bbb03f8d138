"""tokenP answers one call per app key a minute (API.md §9: EGW00133 when called twice within 60 s; §2.1
1분당 1회): a repeat call inside the minute is refused even when it would only return the same token."""

from __future__ import annotations

import pytest

from kis.sim import auth as auth_mod
from kis.sim.auth import AuthRegistry
from kis.sim.testing import Kis, TwinThread
from kis.sim.twin import TwinConfig
from kis.sim.wire import OAuthError

KEY, SECRET = "k" * 36, "s" * 180


class _Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    c = _Clock()
    monkeypatch.setattr(auth_mod.time, "time", c)
    return c


def test_a_second_call_within_the_minute_is_throttled_reuse_or_not(clock: _Clock) -> None:
    reg = AuthRegistry(1)
    t1, reused = reg.issue_token(KEY, SECRET, False)
    assert not reused
    clock.t += 59.9
    with pytest.raises(OAuthError) as exc:
        reg.issue_token(KEY, SECRET, False)  # would have been a reuse answer
    assert exc.value.code == "EGW00133" and exc.value.http_status == 403
    clock.t += 0.2  # 60.1 s after the first call: the refused one did not restart the minute
    t2, reused = reg.issue_token(KEY, SECRET, False)
    assert reused and t2 is t1  # still within 6 h: the same token
    clock.t += 30
    with pytest.raises(OAuthError):
        reg.issue_token(KEY, SECRET, False)
    other, _ = reg.issue_token("o" * 36, SECRET, False)  # the minute is per app key
    assert other.value != t1.value


def test_expire_tokens_with_reset_lets_the_next_call_through(clock: _Clock) -> None:
    reg = AuthRegistry(1)
    t1, _ = reg.issue_token(KEY, SECRET, False)
    reg.expire_all(reset_throttle=False)
    with pytest.raises(OAuthError):
        reg.issue_token(KEY, SECRET, False)
    reg.expire_all(reset_throttle=True)
    t2, reused = reg.issue_token(KEY, SECRET, False)
    assert not reused and t2.value != t1.value


def test_token_calls_on_the_wire() -> None:
    with TwinThread(TwinConfig(seed=29, tick_interval=0)) as tw:
        k = Kis(tw.rest_url, tw.app_key, tw.app_secret, tw.account)
        first = k.issue()
        assert first.status_code == 200
        again = k.issue()
        assert again.status_code == 403
        assert again.json() == {
            "error_description": "접근토큰발급 잠시후 다시 시도하세요(1분당 1회)",
            "error_code": "EGW00133",
        }
        assert k.token == first.json()["access_token"] and k.price("005930").json()["rt_cd"] == "0"
        paper = Kis(tw.paper_rest_url, tw.paper_app_key, tw.paper_app_secret, tw.paper_account)
        assert paper.issue().status_code == 200  # another key: its own minute
