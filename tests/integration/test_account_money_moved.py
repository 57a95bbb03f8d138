"""Money moved out of the account without a trade is not a drawdown (a hunt: 30,000,000 KRW withdrawn read as a
29.98 % drawdown of the account's all-time peak and HALTED the gateway, cancels only, until an operator reset its
peaks). A twin process, its admin moves the money (POST /admin/accounts/{account}/money); a gateway process with
account drawdown limits reads the account every half second."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from common.enums import TradingState
from tests.conftest import Procs, holds_for, start_gateway_on_twin, start_twin, wait_for
from tools.ops.status import fetch_status

pytestmark = pytest.mark.integration

LIMITS = 'account_every_s = 0.5\n[risk]\nmax_drawdown_pct = 10\nhalt_drawdown_pct = 20\ndrawdown_peak = "all_time"\n'


def test_a_withdrawal_moves_the_peaks_and_trading_goes_on(tmp_path: Path, procs: Procs) -> None:
    twin = start_twin(procs, tmp_path)
    admin = httpx.Client(base_url=twin["admin_url"], timeout=10)
    run, _ = start_gateway_on_twin(procs, tmp_path, twin, gateway_toml=LIMITS)
    # the account read and its peak taken (a withdrawal before the first read is no jump: nothing to compare with)
    wait_for(lambda: fetch_status(run).risk.peak_all_time > 0, 30, what="the account's peak")
    account = f"/admin/accounts/{twin['account']}"
    cash = admin.get(account).json()["orderable_cash"]
    # more than the orderable cash cannot leave: refused, nothing moved
    assert admin.post(f"{account}/money", json={"amount": -(cash + 1)}).status_code == 400
    out = admin.post(f"{account}/money", json={"amount": -(cash * 3 // 10)}).json()  # 30 % of it
    assert out["moved"] == -(cash * 3 // 10) and out["orderable_cash"] == cash - cash * 3 // 10
    told = wait_for(
        lambda: [a for a in fetch_status(run).alerts if "money moved out of the account" in a], 20, what="told once"
    )
    assert f"{-(cash * 3 // 10):+,} KRW" in told[0]  # type: ignore[index]
    # several account reads and risk sweeps later: still trading (before: REDUCING at 10 %, HALTED at 20 %)
    holds_for(lambda: fetch_status(run).trading_state is TradingState.ACTIVE, 3.0, what="trading active")
    st = fetch_status(run)
    assert len([a for a in st.alerts if "money moved" in a]) == 1
    assert st.risk.peak_all_time == st.risk.equity == cash - cash * 3 // 10 and st.risk.drawdown_all_time_bp == 0
