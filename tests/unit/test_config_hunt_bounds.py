"""Config values that passed the load and then failed at start or in use (the `config` hunt): a negative account
limit that denied every order, `inf` durations that crashed the start in an OverflowError (exit 1) or slept a loop
for ever, an SMTP port no socket takes, a webhook URL checked stripped and sent with its '\\r'. Each is now refused at
load with the field named (exit 2), or used exactly as checked."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.config import ConfigError, WebhookConfig, load_gateway_config
from tests.conftest import ROOT


def refused(tmp_path: Path, text: str) -> str:
    p = tmp_path / "gateway.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_gateway_config(p, check_env=True)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize(
    "text, field",
    [
        ("[risk]\nmax_open_orders = -1\n", "$.risk.max_open_orders"),
        ("[risk]\nmax_orders_per_minute = -1\n", "$.risk.max_orders_per_minute"),
        ('[broker]\nenv = "paper"\nrate_per_s = inf\n', "$.broker.rate_per_s"),
        ("[broker]\nrate_per_s = inf\n", "$.broker.rate_per_s"),
        ("kill_window_s = inf\n", "$.kill_window_s"),
        ("max_send_wait_s = inf\n", "$.max_send_wait_s"),
        ("amend_grace_s = inf\n", "$.amend_grace_s"),
        ("[trust]\nfreshness_s = inf\n", "$.trust.freshness_s"),
        ("day_tick_s = inf\n", "$.day_tick_s"),
        ("reconcile_s = inf\n", "$.reconcile_s"),
        ("lease_s = inf\n", "$.lease_s"),
        ("lease_s = nan\n", "$.lease_s"),
        ("unknown_grace_s = nan\n", "$.unknown_grace_s"),
        ("[broker]\nrequest_timeout_s = inf\n", "$.broker.request_timeout_s"),
        ('[[notify.smtp]]\nhost = "h"\nsender = "a@b"\nto = ["c@d"]\nport = 70000\n', "$.notify.smtp[0].port"),
        ('[[notify.smtp]]\nhost = "h"\nsender = "a@b"\nto = ["c@d"]\nport = 0\n', "$.notify.smtp[0].port"),
    ],
)
def test_values_that_cannot_work_are_refused_naming_the_field(tmp_path: Path, text: str, field: str) -> None:
    msg = refused(tmp_path, text)
    assert field in msg, msg


def test_the_gateway_says_so_and_exits_2(tmp_path: Path) -> None:
    for text, field in (
        ('[broker]\nenv = "paper"\nrate_per_s = inf\n', "$.broker.rate_per_s"),  # was OverflowError, exit 1
        ("[risk]\nmax_open_orders = -1\n", "$.risk.max_open_orders"),  # was accepted, every order denied
    ):
        cfg = tmp_path / "gw.toml"
        cfg.write_text(f'run_dir = "{tmp_path / "run"}"\n{text}')
        p = subprocess.run(
            [sys.executable, "-m", "tools", "gateway", "--config", str(cfg)],
            cwd=ROOT,
            env=os.environ,
            capture_output=True,
            timeout=60,
        )
        err = p.stderr.decode()
        assert p.returncode == 2 and field in err and "unexpected" not in err, err
        assert not (tmp_path / "run").exists()


def test_a_day_and_unlimited_limits_still_load(tmp_path: Path) -> None:
    p = tmp_path / "gateway.toml"
    p.write_text("[risk]\nmax_open_orders = 0\nmax_orders_per_minute = 0\n[broker]\nrate_per_s = 1000\n")
    assert load_gateway_config(p).risk.max_open_orders == 0
    p.write_text("kill_window_s = 86400\nunknown_grace_s = 86400\nday_tick_s = 3600\n")
    assert load_gateway_config(p).kill_window_s == 86400


def test_a_webhook_url_is_sent_as_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Windows-edited env file leaves '\\r' on the URL: the load check stripped it, the sender posted it (every
    alert: 'Invalid non-printable ASCII character in URL'). Both use the same stripped URL now."""
    from server.notifier import Heartbeat, WebhookChannel

    monkeypatch.setenv("KT_HOOK", "http://127.0.0.1:9/hook\r")
    p = tmp_path / "gateway.toml"
    p.write_text('[notify]\nheartbeat_url_env = "KT_HOOK"\n[[notify.webhooks]]\nurl_env = "KT_HOOK"\n')
    cfg = load_gateway_config(p, check_env=True)
    assert WebhookChannel(cfg.notify.webhooks[0]).url == "http://127.0.0.1:9/hook"
    assert Heartbeat(cfg.notify, time.monotonic).url == "http://127.0.0.1:9/hook"
    assert WebhookChannel(WebhookConfig(url=" http://127.0.0.1:9/k ")).url == "http://127.0.0.1:9/k"
    monkeypatch.setenv("KT_HOOK", "\r")  # nothing but the '\r': as unset (the sender had 'no URL' on every alert)
    assert "KT_HOOK is not set" in refused(tmp_path, '[[notify.webhooks]]\nurl_env = "KT_HOOK"\n')
