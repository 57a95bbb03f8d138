"""broker.rate_per_s must stay below KIS's limit, not merely at it.

The REST budget (kis/budget.py) spaces calls 1/rate apart, so some one-second window holds
floor(rate)+1 of them: 20/s on real puts 21 calls into a second, 2/s on paper 3, and KIS refuses the
excess (EGW00201, counted by the kill switch). Such a rate is refused at load, and the message says
what to set. The shipped defaults (18/s real, 1.8/s paper) and the example config still load.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from common.config import KIS_LIMIT_PER_S, BrokerConfig, BrokerEnv, ConfigError, load_gateway_config
from kis.env import environment_for
from tests.conftest import ROOT


def load(tmp_path: Path, env: str, rate: float) -> None:
    p = tmp_path / "gateway.toml"
    p.write_text(f'[broker]\nenv = "{env}"\nrate_per_s = {rate}\n')
    load_gateway_config(p)


@pytest.mark.parametrize(("env", "rate", "calls", "below"), [("real", 20, 21, "20"), ("paper", 2, 3, "2")])
def test_a_rate_at_the_kis_limit_is_refused_with_what_to_set(
    tmp_path: Path, env: str, rate: float, calls: int, below: str
) -> None:
    with pytest.raises(ConfigError) as err:  # before: loaded, and KIS refused a call now and then
        load(tmp_path, env, rate)
    msg = str(err.value)
    assert "broker.rate_per_s" in msg and f"limit of {below}/s" in msg and f"put {calls} into some second" in msg
    assert f"below {below}" in msg and "\n" not in msg


@pytest.mark.parametrize(("env", "rate"), [("real", 19.9), ("real", 19), ("paper", 1.9), ("paper", 0)])
def test_a_rate_below_the_limit_loads(tmp_path: Path, env: str, rate: float) -> None:
    load(tmp_path, env, rate)


@pytest.mark.parametrize("env", [BrokerEnv.REAL, BrokerEnv.PAPER])
def test_the_default_rates_keep_every_second_within_the_limit(env: BrokerEnv) -> None:
    rate = environment_for(BrokerConfig(env=env)).rate_per_s
    assert math.floor(rate) + 1 <= KIS_LIMIT_PER_S[env], rate


def test_the_example_config_still_loads() -> None:
    assert load_gateway_config(ROOT / "gateway.example.toml").broker.env is BrokerEnv.SIM
