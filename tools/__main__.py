"""`python -m tools ...` = `ktrader ...` (agents take the light path, see tools/launch.py)."""

from tools.launch import main

main()
