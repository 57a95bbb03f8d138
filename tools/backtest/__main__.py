import sys

from tools.backtest.cli import main

sys.exit(main())
