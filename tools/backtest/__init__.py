"""The backtester: a card's strategy on historical bars through the live Strategy API (issue 9).

Modules: data (CSV loaders), costs (commission/tax), broker (simulated fills), engine (the loop and
the Context), metrics, report (CSV/JSON/PNG/HTML), sweep (grids, walk-forward), cli."""
