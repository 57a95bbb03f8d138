"""`ktrader web`: the dashboard process (tools/web/server.py) and its page (static/)."""
