"""Trading costs: the one model in `common.costs` (shared with the gateway's books and the twin)."""

from common.costs import MAX_PARTICIPATION_BP, PPM, CostModel

__all__ = ["MAX_PARTICIPATION_BP", "PPM", "CostModel"]
