"""Which stock master the gateway checks orders against (config `master_dir`).

- `master_dir` set: the KIS master files there (a bad folder stops the gateway with a clear error).
- empty, env sim (the twin, embedded or not): the twin's stock list, the codes it can trade.
- empty, env paper/real: nothing to check against; logged loudly, codes are not checked (set
  `master_dir` to the folder of kospi_code.mst / kosdaq_code.mst for a real account)."""

from __future__ import annotations

import logging

from common.config import BrokerEnv, ConfigError, GatewayConfig
from kis.master import MasterError, StockMaster, load_stock_master

log = logging.getLogger("ktrader.master")


def gateway_master(cfg: GatewayConfig) -> StockMaster | None:
    if not cfg.master_dir and cfg.broker.env is not BrokerEnv.SIM:
        log.warning("no master_dir configured: order codes are not checked against a stock master")
        return None
    try:
        master = load_stock_master(cfg.master_dir or None)
    except (MasterError, OSError) as e:
        raise ConfigError(f"master_dir {cfg.master_dir!r}: {e}") from None
    log.info("stock master: %d codes from %s", len(master.entries), master.source)
    return master
