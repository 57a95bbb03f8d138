"""Where the checkout and the shared data are (one place for the tools that start processes or read
../shared/data)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout: processes start here, with it on PYTHONPATH
SHARED = Path(os.environ.get("KTRADER_SHARED", ROOT.parent / "shared"))  # market data for benches and rehearsals
