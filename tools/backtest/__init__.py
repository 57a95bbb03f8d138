"""The backtester: a card's strategy on historical bars through the live Strategy API (issue 9).

Modules: data (CSV/parquet loaders, daily and intraday), sources (--data or the gateway's bar store for
--twin-replay), costs (commission/tax), broker (simulated fills), engine (the loop and the Context),
services (ctx.state etc.), metrics, report (CSV/JSON/PNG/HTML), sweep (grids, walk-forward), cli."""
