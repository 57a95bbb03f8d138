"""TLS trust for the KIS connections: certifi's store (the REST client and the websocket use the same), plus an optional
CA bundle from the config (`broker.ca_bundle`), e.g. a company proxy that inspects TLS."""

from __future__ import annotations

import ssl
from pathlib import Path

import certifi


class TlsConfigError(ValueError):
    """broker.ca_bundle cannot be used; the message says why."""


def tls_context(ca_bundle: str = "") -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=certifi.where())
    if ca_bundle:
        path = Path(ca_bundle).expanduser()
        try:
            ctx.load_verify_locations(cafile=str(path))
        except FileNotFoundError:
            raise TlsConfigError(f"broker.ca_bundle {path}: no such file") from None
        except (OSError, ssl.SSLError) as e:
            raise TlsConfigError(f"broker.ca_bundle {path}: not a readable PEM CA bundle ({e})") from None
    return ctx
