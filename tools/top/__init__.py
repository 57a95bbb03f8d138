"""`ktrader top`: the operations console (app, widgets, and a terminal-free model layer)."""
