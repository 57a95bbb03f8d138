"""Edges of the gateway's configuration a user can step on: a run folder of another account, files
that are not UTF-8, `~` in paths, settings that cannot work (a clock typo, 0 s intervals, a rate
above KIS's limit), credentials ignored on sim, alert channels that could never deliver. Each is
refused at load (or start) with a line that names the field and says what to do."""

from __future__ import annotations

import hashlib

import logging
from pathlib import Path

import msgspec
import pytest

from common.config import (
    BrokerConfig,
    BrokerEnv,
    ConfigError,
    GatewayConfig,
    SimClock,
    load_card,
    load_gateway_config,
)
from kis.credentials import ENV_APP_KEY, Credentials, CredentialsError, load_credentials
from kis.env import environment_for
from server.core import run_owner
from server.store import OwnerMismatch, Store

KOREAN_CP949 = "# 모의투자 계좌\n".encode("cp949")
CRED = 'app_key = "PSkey"\napp_secret = "topsecret-value"\naccount = "50123456-01"\nhts_id = "someone"\n'


def write(tmp_path: Path, text: str | bytes, name: str = "gateway.toml") -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return p


def refused(tmp_path: Path, text: str | bytes) -> str:
    with pytest.raises(ConfigError) as e:
        load_gateway_config(write(tmp_path, text), check_env=True)  # as the gateway and doctor load it
    msg = str(e.value)
    assert "\n" not in msg  # one line
    return msg


# ---- 1. a run folder keeps the environment and account whose books it holds ---------------------------


class FakeKis:
    """What run_owner reads of a KIS broker: its credentials."""

    def __init__(self, account: str, app_key: str = "PS" + "k" * 34) -> None:
        self._creds = Credentials(app_key, "s" * 180, account, "someone")


OWNER_DIR: list[Path] = []  # the run folder whose owner key fingerprints the account (set by the test)


def owner(env: BrokerEnv, account: str = "", app_key: str = "PS" + "k" * 34) -> dict[str, str]:
    cfg = GatewayConfig(broker=BrokerConfig(env=env))
    return run_owner(cfg, FakeKis(account or "50123456-01", app_key), OWNER_DIR[-1])  # type: ignore[arg-type]


def test_a_run_folder_of_the_twin_is_refused_for_paper_and_another_account(tmp_path: Path) -> None:
    OWNER_DIR[:] = [tmp_path]
    store = Store(tmp_path / "db" / "gateway.sqlite")
    sim = owner(BrokerEnv.SIM)
    assert sim == {"env": "sim"}  # the twin's demo account is play money: any twin may reuse run/
    store.claim_owner(sim, tmp_path)
    store.claim_owner(sim, tmp_path)  # sim to sim: as before
    with pytest.raises(OwnerMismatch) as e:
        store.claim_owner(owner(BrokerEnv.PAPER), tmp_path)
    msg = str(e.value)
    assert "the KIS twin" in msg and "paper account 50******-01" in msg and "ktrader reset" in msg, msg
    assert "50123456" not in msg and "\n" not in msg  # no full account number, one line
    store.close()

    other = tmp_path / "paper"
    OWNER_DIR[:] = [other]
    store = Store(other / "db" / "gateway.sqlite")
    store.claim_owner(owner(BrokerEnv.PAPER, "50123456-01"), other)
    # a new app key on the same account (KIS reissues them yearly) keeps the books
    store.claim_owner(owner(BrokerEnv.PAPER, "50123456-01", "PS" + "n" * 34), other)
    # another account with the same masked form (50******-01): refused, and said to be another account
    with pytest.raises(OwnerMismatch, match="paper account 50\\*+-01.*another account with the same masked form"):
        store.claim_owner(owner(BrokerEnv.PAPER, "50999999-01"), other)
    with pytest.raises(OwnerMismatch, match="real account"):
        store.claim_owner(owner(BrokerEnv.REAL, "50123456-01"), other)
    store.close()
    # and it is durable: a new process reads the same owner
    store = Store(other / "db" / "gateway.sqlite")
    with pytest.raises(OwnerMismatch):
        store.claim_owner(owner(BrokerEnv.SIM), other)
    # the store alone does not give the account back: its fingerprint is keyed by run/keys/owner.key
    held = store.meta_prefix("owner.")
    plain = hashlib.sha256(b"ktrader-account:50123456-01").hexdigest()[:16]
    assert held["account_id"] not in (plain, hashlib.sha256(b"50123456-01").hexdigest()[:16])
    assert (other / "keys" / "owner.key").stat().st_mode & 0o077 == 0
    # the key lost: checked by the masked form and the app key (the same pair passes, another is refused: a masked
    # form names a million accounts; a hunt had another account of the same form take the folder's books)
    new_key = "PS" + "n" * 34  # (the folder's latest app key, above)
    (other / "keys" / "owner.key").unlink()
    store.claim_owner(owner(BrokerEnv.PAPER, "50123456-01", new_key), other)
    (other / "keys" / "owner.key").unlink()
    with pytest.raises(OwnerMismatch):
        store.claim_owner(owner(BrokerEnv.PAPER, "64123456-01", new_key), other)
    (other / "keys" / "owner.key").unlink()
    with pytest.raises(OwnerMismatch) as lost:
        store.claim_owner(owner(BrokerEnv.PAPER, "50999999-01", "PS" + "z" * 34), other)
    assert "owner.key is gone" in str(lost.value) and "app keys differ" in str(lost.value), lost.value
    store.close()


# ---- 3. files that are not UTF-8; a BOM ------------------------------------------------------------


def test_cp949_config_card_and_credentials_are_refused_with_a_plain_line(tmp_path: Path) -> None:
    msg = refused(tmp_path, KOREAN_CP949 + b'[broker]\nenv = "sim"\n')
    assert "not UTF-8" in msg and "save it as UTF-8" in msg, msg
    card = write(tmp_path, KOREAN_CP949 + b'id = "xy"\nname = "x"\nstrategy = "m:C"\n', "x.toml")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_card(card)
    cred = write(tmp_path, KOREAN_CP949 + CRED.encode(), "cred.toml")
    with pytest.raises(CredentialsError) as e:
        load_credentials(cred)
    assert "not UTF-8" in str(e.value) and "topsecret" not in str(e.value)


def test_a_utf8_bom_is_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bom = "\ufeff"
    assert load_gateway_config(write(tmp_path, bom + "reconcile_s = 45\n")).reconcile_s == 45
    card = write(tmp_path, bom + 'id = "xy"\nname = "x"\nstrategy = "m:C"\n', "x.toml")
    assert load_card(card).id == "xy"
    for var in ("KTRADER_KIS_APP_KEY", "KTRADER_KIS_APP_SECRET", "KTRADER_KIS_ACCOUNT", "KTRADER_KIS_HTS_ID"):
        monkeypatch.delenv(var, raising=False)
    cred = write(tmp_path, bom + CRED, "cred.toml")
    cred.chmod(0o600)
    assert load_credentials(cred).app_key == "PSkey"


# ---- 4. ~ in paths ---------------------------------------------------------------------------------------


def test_tilde_is_expanded_in_every_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load_gateway_config(
        write(
            tmp_path,
            'run_dir = "~/kt/run"\nmaster_dir = "~/kis-master"\n[broker]\nenv = "paper"\n'
            'credentials_file = "~/cred.toml"\nca_bundle = "~/ca.pem"\n[trust]\ncards_dir = "~/cards"\n',
        )
    )
    assert cfg.run_dir == f"{tmp_path}/kt/run" and cfg.master_dir == f"{tmp_path}/kis-master"
    assert cfg.broker.credentials_file == f"{tmp_path}/cred.toml" and cfg.broker.ca_bundle == f"{tmp_path}/ca.pem"
    assert cfg.trust.cards_dir == f"{tmp_path}/cards"
    assert load_gateway_config(write(tmp_path, "reconcile_s = 30\n")).master_dir == ""  # "" stays ""


# ---- 5. sim_clock is an enum -------------------------------------------------------------------------------


def test_sim_clock_typo_is_refused_naming_the_field(tmp_path: Path) -> None:
    msg = refused(tmp_path, '[broker]\nsim_clock = "kts"\n')
    assert "$.broker.sim_clock" in msg and "kts" in msg, msg
    cfg = load_gateway_config(write(tmp_path, '[broker]\nsim_clock = "kst"\n'))
    assert cfg.broker.sim_clock is SimClock.KST


# ---- 6. bounds ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, field",
    [
        ("day_tick_s = 0\n", "$.day_tick_s"),
        ("reconcile_s = 0\n", "$.reconcile_s"),
        ("reconcile_s = 0.5\n", "$.reconcile_s"),
        ("heartbeat_s = 0\n", "$.heartbeat_s"),
        ("lease_s = 0\n", "$.lease_s"),
        ("universe_refresh_s = 0\n", "$.universe_refresh_s"),
        ("kill_window_s = 0\n", "$.kill_window_s"),
        ("[broker]\nrequest_timeout_s = 0\n", "$.broker.request_timeout_s"),
        ("[[notify.webhooks]]\nurl = 'http://x'\ntimeout_s = 0\n", "$.notify.webhooks[0].timeout_s"),
        ("heartbeat_s = 1.0\nlease_s = 1.0\n", "heartbeat_s"),
    ],
)
def test_numbers_that_cannot_work_are_refused(tmp_path: Path, text: str, field: str) -> None:
    msg = refused(tmp_path, text)
    assert field in msg, msg


# ---- 7. rate_per_s above KIS's limit ----------------------------------------------------------------------


def test_rate_above_the_kis_limit_is_refused(tmp_path: Path) -> None:
    msg = refused(tmp_path, '[broker]\nenv = "paper"\nrate_per_s = 5\n')
    assert "broker.rate_per_s" in msg and "limit of 2/s" in msg, msg
    assert "limit of 20/s" in refused(tmp_path, '[broker]\nenv = "real"\nrate_per_s = 25\n')
    # at the limit itself too: calls spaced 1/20 s apart put 21 into some second
    assert "limit of 20/s" in refused(tmp_path, '[broker]\nenv = "real"\nrate_per_s = 20\n')
    ok = load_gateway_config(write(tmp_path, '[broker]\nenv = "real"\nrate_per_s = 19.9\n'))
    assert environment_for(ok.broker).rate_per_s == 19.9
    # the twin enforces nothing: tests and benches run it fast
    sim = load_gateway_config(
        write(tmp_path, '[broker]\nrate_per_s = 1000\nrest_url = "http://h"\nws_url = "ws://h"\n')
    )
    assert environment_for(sim.broker).rate_per_s == 1000


# ---- 8. credentials ignored on sim ----------------------------------------------------------------------------


def test_credentials_on_sim_are_said_to_be_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from server.brokers import make_gateway_broker

    monkeypatch.setenv(ENV_APP_KEY, "PS" + "k" * 34)
    cfg = GatewayConfig(run_dir=str(tmp_path / "run"))
    with caplog.at_level(logging.WARNING, logger="ktrader.broker"):
        make_gateway_broker(cfg)
    warned = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(warned) == 1 and ENV_APP_KEY in warned[0] and 'env = "paper"' in warned[0], warned
    assert "PS" + "k" * 34 not in warned[0]
    caplog.clear()
    monkeypatch.delenv(ENV_APP_KEY)
    with caplog.at_level(logging.WARNING, logger="ktrader.broker"):
        make_gateway_broker(msgspec.structs.replace(cfg, broker=BrokerConfig(credentials_file="/x/cred.toml")))
    assert any("broker.credentials_file ignored" in r.getMessage() for r in caplog.records)


def test_an_orders_retries_stop_where_the_send_queue_stops_waiting(tmp_path: Path) -> None:
    """KIS write retries end at the gateway's max_send_wait_s (a decision that old is not sent), not at a
    default of their own."""
    from server.brokers import WRITE_DEADLINE_UNBOUNDED_S, make_gateway_broker

    cfg = GatewayConfig(run_dir=str(tmp_path / "run"), max_send_wait_s=2.5)
    assert make_gateway_broker(cfg).rest.write_deadline_s == 2.5  # type: ignore[attr-defined]
    unbounded = msgspec.structs.replace(cfg, max_send_wait_s=0.0)
    assert make_gateway_broker(unbounded).rest.write_deadline_s == WRITE_DEADLINE_UNBOUNDED_S  # type: ignore[attr-defined]


# ---- 10. alert channels that could never deliver --------------------------------------------------------------


@pytest.mark.parametrize(
    "text, needle",
    [
        ('[[notify.webhooks]]\nshape = "telegram"\nurl_env = "KT_TEST_SET"\n', "chat_id"),
        ('[[notify.webhooks]]\nshape = "telegram"\nurl_env = "KT_TEST_UNSET"\nchat_id = "1"\n', "KT_TEST_UNSET"),
        ('[[notify.webhooks]]\nshape = "slack"\n', "needs url_env"),
        ('[[notify.webhooks]]\nurl = "http://x"\nurl_env = "KT_TEST_SET"\n', "not both"),
        (
            '[[notify.smtp]]\nhost = "h"\nsender = "a@b"\nto = ["c@d"]\nusername = "u"\n',
            "notify.smtp[0].password_env",
        ),
        (
            '[[notify.smtp]]\nhost = "h"\nsender = "a@b"\nto = ["c@d"]\nusername = "u"\n'
            'password_env = "KT_TEST_UNSET"\n',
            "KT_TEST_UNSET",
        ),
        ('[[notify.smtp]]\nhost = "h"\nsender = "a@b"\nto = []\n', "no recipient"),
    ],
)
def test_alert_channels_that_cannot_deliver_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, needle: str
) -> None:
    monkeypatch.setenv("KT_TEST_SET", "https://api.telegram.org/botSECRET/sendMessage")
    monkeypatch.delenv("KT_TEST_UNSET", raising=False)
    msg = refused(tmp_path, text)
    assert needle in msg and "SECRET" not in msg, msg
    if "UNSET" in needle:  # the operator's other tools read the config where the secrets are not set
        assert load_gateway_config(write(tmp_path, text)).notify is not None


def test_alert_channels_that_can_deliver_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KT_TEST_SET", "https://hooks.example/x")
    monkeypatch.setenv("KT_TEST_PW", "pw")
    cfg = load_gateway_config(
        write(
            tmp_path,
            '[[notify.webhooks]]\nshape = "telegram"\nurl_env = "KT_TEST_SET"\nchat_id = "42"\n'
            '[[notify.webhooks]]\nshape = "json"\nurl = "http://127.0.0.1:9/k"\n'
            '[[notify.smtp]]\nhost = "h"\nsender = "a@b"\nto = ["c@d"]\nusername = "u"\npassword_env = "KT_TEST_PW"\n',
        )
    )
    assert len(cfg.notify.webhooks) == 2 and len(cfg.notify.smtp) == 1


def test_a_refused_start_does_not_lock_the_folder_out_of_its_own_account(tmp_path: Path) -> None:
    """The owner key is made before the owner is judged: after one refused start (the wrong credentials
    file) on a folder whose fingerprint predates the key, its own account must still be taken."""
    run = tmp_path / "run"
    OWNER_DIR[:] = [run]
    store = Store(run / "db" / "gateway.sqlite")
    with store.transaction():  # a fingerprint kept without the key (its key_id unknown)
        for k, v in (("env", "paper"), ("account", "50******-01"), ("account_id", "0123456789abcdef")):
            store.set_meta("owner." + k, v)
    with pytest.raises(OwnerMismatch):
        store.claim_owner(owner(BrokerEnv.PAPER, "64123456-01"), run)
    store.claim_owner(owner(BrokerEnv.PAPER, "50123456-01"), run)  # taken, and kept under the key now
    store.claim_owner(owner(BrokerEnv.PAPER, "50123456-01"), run)
    with pytest.raises(OwnerMismatch):
        store.claim_owner(owner(BrokerEnv.PAPER, "50999999-01"), run)  # same masked form: the key tells
    store.close()
