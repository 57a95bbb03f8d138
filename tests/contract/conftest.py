"""Contract fixtures (the KIS twin subprocess); the helpers live in kis_twin.py."""

from kis_twin import twin  # noqa: F401  (session fixture)
