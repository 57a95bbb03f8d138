"""gateway.example.toml loads as it is, and with its paper or real [broker] block in place of sim."""

from __future__ import annotations

import re
from pathlib import Path

from common.config import BrokerEnv, load_gateway_config
from tests.conftest import ROOT


def test_example_config_loads_for_sim_paper_and_real(tmp_path: Path) -> None:
    text = (ROOT / "gateway.example.toml").read_text()
    assert load_gateway_config(ROOT / "gateway.example.toml").broker.env is BrokerEnv.SIM
    sim = re.search(r"^\[broker\]\nenv = \"sim\"\n(?:[^\n]+\n)*", text, re.M)
    assert sim is not None
    for env in ("paper", "real"):
        block = re.search(rf"^# \[broker\]\n# env = \"{env}\"\n(?:#[^\n]*\n)*", text, re.M)
        assert block is not None
        lines = [ln[2:] for ln in block.group(0).splitlines() if ln.startswith("# ") and not ln.startswith("# #")]
        p = tmp_path / f"{env}.toml"
        p.write_text(text.replace(sim.group(0), "\n".join(lines) + "\n"))
        assert load_gateway_config(p).broker.env is BrokerEnv(env)
