"""`ktrader rehearse`: the desk over days of real KRX history on the twin, audited and compared with
the backtester (README: "Running for days")."""
