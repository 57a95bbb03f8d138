"""One loader for "which codes exist": the KIS master files, or the twin's list when none is given."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import BrokerEnv, BrokerConfig, ConfigError, GatewayConfig
from kis.master import load_stock_master
from server.stockmaster import gateway_master


def test_master_files_and_twin_fallback(shared_data: Path) -> None:
    real = load_stock_master(shared_data / "krx_master")
    assert real.strict and len(real.entries) > 2000
    assert real.name("005930") == "삼성전자" and real.entries["005930"].group == "ST"
    twin = load_stock_master(None)
    assert not twin.strict and "005930" in twin and "999990" not in twin
    assert twin.entries["069500"].group == "EF"


def test_gateway_master_choice(tmp_path: Path) -> None:
    assert gateway_master(GatewayConfig()) is not None  # sim: the twin's list
    assert gateway_master(GatewayConfig(broker=BrokerConfig(env=BrokerEnv.PAPER))) is None  # nothing to check against
    with pytest.raises(ConfigError, match="master_dir"):
        gateway_master(GatewayConfig(master_dir=str(tmp_path)))  # a folder without master files
