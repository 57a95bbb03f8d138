"""Trading costs: the one model in `common.costs` (shared with the gateway's books and the twin)."""

from common.costs import PPM, CostModel

__all__ = ["PPM", "CostModel"]
