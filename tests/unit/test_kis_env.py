from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.config import BrokerConfig, BrokerEnv
from kis.credentials import Credentials, CredentialsError, load_credentials
from kis.env import Tr, environment_for, paper_tr_id


def test_environments_are_data() -> None:
    real = environment_for(BrokerConfig(env=BrokerEnv.REAL))
    paper = environment_for(BrokerConfig(env=BrokerEnv.PAPER))
    assert (
        real.rest_url == "https://openapi.koreainvestment.com:9443"
        and real.ws_url == "ws://ops.koreainvestment.com:21000/tryitout"
    )
    assert paper.rest_url.endswith(":29443") and paper.ws_url == "ws://ops.koreainvestment.com:31000/tryitout"
    assert real.tr_id(Tr.ORDER_BUY) == "TTTC0012U" and paper.tr_id(Tr.ORDER_BUY) == "VTTC0012U"
    assert paper.tr_id(Tr.ORDER_SELL) == "VTTC0011U" and paper.tr_id(Tr.ORDER_RVSECNCL) == "VTTC0013U"
    assert paper.tr_id(Tr.DAILY_CCLD) == "VTTC0081R" and paper.tr_id(Tr.BALANCE) == "VTTC8434R"
    assert paper.tr_id(Tr.PRICE) == "FHKST01010100"  # quotations: same id
    with pytest.raises(ValueError):
        paper.tr_id(Tr.VOLUME_RANK)
    assert (real.rate_per_s, paper.rate_per_s) == (18.0, 1.8)
    assert (real.balance_page_size, paper.balance_page_size, real.daily_ccld_page_size, paper.daily_ccld_page_size) == (
        50,
        20,
        100,
        15,
    )
    assert (real.notice_tr, paper.notice_tr) == ("H0STCNI0", "H0STCNI9")
    assert paper_tr_id("CTSC9215R") == "VTSC9215R" and paper_tr_id("FHPST01710000") == "FHPST01710000"


def test_sim_uses_twin_urls_and_overrides() -> None:
    sim = environment_for(
        BrokerConfig(env=BrokerEnv.SIM, rest_url="http://127.0.0.1:5000/", ws_url="ws://127.0.0.1:5001", rate_per_s=50)
    )
    assert sim.rest_url == "http://127.0.0.1:5000" and sim.ws_url == "ws://127.0.0.1:5001/tryitout"
    assert sim.tr_id(Tr.ORDER_BUY) == "TTTC0012U" and sim.rate_per_s == 50
    assert (
        environment_for(BrokerConfig(env=BrokerEnv.SIM, rest_url="http://x", ws_url="ws://y"), sim_paper=True).tr_id(
            Tr.ORDER_BUY
        )
        == "VTTC0012U"
    )
    with pytest.raises(ValueError):
        environment_for(BrokerConfig(env=BrokerEnv.SIM))


def test_credentials_never_show_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = Credentials("APPKEY-SECRET-VALUE-0123456789abcdef", "S" * 180, "12345678-01", "$hts")
    text = repr(c) + str(c) + f"{c}"
    assert "APPKEY" not in text and "SSSS" not in text and "345678" not in text
    assert (c.cano, c.acnt_prdt_cd, c.hts_id, c.account) == ("12345678", "01", "$hts", "12345678-01")
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(c)
    with pytest.raises(CredentialsError):
        Credentials("k", "s", "1234-01", "h")
    f = tmp_path / "kis.toml"
    f.write_text('app_key = "filekey"\napp_secret = "filesecret"\naccount = "1234567801"\nhts_id = "fromfile"\n')
    os.chmod(f, 0o600)
    for var in ("KTRADER_KIS_APP_KEY", "KTRADER_KIS_APP_SECRET", "KTRADER_KIS_ACCOUNT", "KTRADER_KIS_HTS_ID"):
        monkeypatch.delenv(var, raising=False)
    got = load_credentials(f)
    assert (got.app_key, got.cano, got.acnt_prdt_cd, got.hts_id) == ("filekey", "12345678", "01", "fromfile")
    monkeypatch.setenv("KTRADER_KIS_HTS_ID", "fromenv")
    assert load_credentials(f).hts_id == "fromenv"  # env wins
    f.write_text('app_key = "topsecret-in-a-broken-file')
    with pytest.raises(CredentialsError) as ei:
        load_credentials(f)
    assert "topsecret" not in str(ei.value)
    with pytest.raises(CredentialsError):
        load_credentials(None)
