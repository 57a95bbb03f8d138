"""A configuration that names one KIS environment and means another is refused before anything is read or
approved (a hunt: KIS's real hosts in [broker] with `env` left at its default "sim" would have traded the real
account with the twin's rules: its first start approved every sample card, no rate check, no stock master,
`doctor` said "env sim"). And a setting nothing reads is no setting: `account_budget` is refused as unknown."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import BrokerConfig, BrokerEnv, ConfigError, GatewayConfig, load_gateway_config
from kis.env import PAPER_REST_URL, PAPER_WS_URL, REAL_REST_URL, REAL_WS_URL, url_problems
from kis.startup import StartExit, StartupError


@pytest.mark.parametrize(
    "env, rest, ws, fields",
    [
        (BrokerEnv.SIM, REAL_REST_URL, REAL_WS_URL, ["broker.rest_url", "broker.ws_url"]),
        (BrokerEnv.SIM, PAPER_REST_URL, "", ["broker.rest_url"]),
        (BrokerEnv.PAPER, REAL_REST_URL, PAPER_WS_URL, ["broker.rest_url"]),
        (BrokerEnv.REAL, REAL_REST_URL, PAPER_WS_URL, ["broker.ws_url"]),
        (BrokerEnv.REAL, REAL_REST_URL, REAL_WS_URL, []),
        (BrokerEnv.PAPER, PAPER_REST_URL, PAPER_WS_URL, []),
        (BrokerEnv.SIM, "http://127.0.0.1:18080", "ws://127.0.0.1:18081", []),  # `ktrader sim`
    ],
)
def test_urls_of_another_kis_environment_are_named(env: BrokerEnv, rest: str, ws: str, fields: list[str]) -> None:
    problems = url_problems(BrokerConfig(env=env, rest_url=rest, ws_url=ws))
    assert [f for f, _ in problems] == fields, problems


def test_the_gateway_refuses_kis_hosts_under_env_sim_before_reading_credentials(tmp_path: Path) -> None:
    from server.brokers import make_gateway_broker

    cfg = GatewayConfig(run_dir=str(tmp_path / "run"), broker=BrokerConfig(rest_url=REAL_REST_URL, ws_url=REAL_WS_URL))
    with pytest.raises(StartupError) as e:
        make_gateway_broker(cfg)  # (no credentials are set: it is refused for the URLs, exit 2, not 4)
    assert e.value.exit_code is StartExit.CONFIG
    [line, hint] = e.value.lines()
    assert 'env "sim" is the twin\'s: set [broker] env = "real"' in line and "openapi.koreainvestment" in line, line
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_account_budget_is_refused_as_an_unknown_field(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text("account_budget = 100_000\n")
    with pytest.raises(ConfigError, match="account_budget"):
        load_gateway_config(cfg)


def test_a_module_missing_after_a_checkout_update_says_to_run_make_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(a hunt) A `git pull` adding a dependency: the gateway died at its start on "unexpected ModuleNotFoundError"
    (exit 1), with nothing to say `make install`."""
    from tools import cli, paths

    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "ktrader"\ndependencies = ["msgspec>=0.18", "no-such-dist-ktrader>=3"]\n'
    )
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    text = cli.stale_install_text(ModuleNotFoundError("No module named 'no_such_dist_ktrader'"))
    assert "no-such-dist-ktrader" in text and "make install" in text and "msgspec" not in text, text
    assert cli.stale_install_text(ValueError("x")) == ""
    monkeypatch.setattr(paths, "ROOT", tmp_path / "elsewhere")  # not run from a checkout: nothing to compare
    assert cli.stale_install_text(ModuleNotFoundError("x")) == ""


def test_approvals_made_before_an_owner_key_was_lost_survive_the_next_app_key_reissue(tmp_path: Path) -> None:
    """(a review) The owner key lost, the same account and app key start again: the folder is kept under a new key.
    Its approvals were left under the old one, told apart from another account by the app key alone, and the next
    yearly reissue of the app key refused every agent ("approved for the real account 50******-01, not for this
    gateway's the real account 50******-01"). The start binds them to the owner under its new key."""
    from common import approvals
    from common.config import AgentCard

    def owner(key_id: str, account_id: str, app_key: str) -> dict[str, str]:
        return {"env": "real", "account": "50******-01", "account_id": account_id, "key_id": key_id, "app_key": app_key}

    card = AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"], budget=1_000_000)
    approvals.bind_owner(tmp_path, owner("k1", "acct-k1", "appA"))
    approvals.approve(tmp_path, [card], by="operator")
    approvals.bind_owner(tmp_path, owner("k2", "acct-k2", "appA"))  # the start after the key was lost
    approvals.bind_owner(tmp_path, rotated := owner("k2", "acct-k2", "appB"))  # next year's app key
    assert approvals.ApprovedCards(tmp_path, rotated).get("alpha") is not None
    # another account of the same masked form, after the key loss, is still refused
    approvals.bind_owner(tmp_path, other := owner("k3", "acct-other", "appZ"))
    assert approvals.ApprovedCards(tmp_path, other).get("alpha") is None


def test_a_universe_reranked_twice_a_day_loads(tmp_path: Path) -> None:
    """(a review) The bound of the loop intervals (an hour) fit the universe's re-ranking too: 2 h failed the start."""
    cfg = tmp_path / "gw.toml"
    cfg.write_text("universe_refresh_s = 43_200\n")
    assert load_gateway_config(cfg).universe_refresh_s == 43_200
    cfg.write_text("universe_refresh_s = inf\n")
    with pytest.raises(ConfigError, match="universe_refresh_s"):
        load_gateway_config(cfg)
