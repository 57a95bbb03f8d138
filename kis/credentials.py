"""KIS credentials: app key/secret, account and HTS id, from environment variables or a TOML file.

The secret values never appear in a repr, a log line or an exception message. They are sent to
KIS only (headers/body of auth and API calls).
"""

from __future__ import annotations

from collections.abc import Mapping

import hashlib
import logging
import os
import stat
import tomllib
from pathlib import Path

log = logging.getLogger(__name__)

ENV_APP_KEY = "KTRADER_KIS_APP_KEY"
ENV_APP_SECRET = "KTRADER_KIS_APP_SECRET"
ENV_ACCOUNT = "KTRADER_KIS_ACCOUNT"
ENV_HTS_ID = "KTRADER_KIS_HTS_ID"


def credentials_env(info: Mapping[str, str]) -> dict[str, str]:
    """The environment variables that hand credentials (keys app_key, app_secret, account, hts_id,
    as `ktrader sim` prints its demo account) to a gateway process."""
    return {
        ENV_APP_KEY: info["app_key"],
        ENV_APP_SECRET: info["app_secret"],
        ENV_ACCOUNT: info["account"],
        ENV_HTS_ID: info["hts_id"],
    }


class CredentialsError(ValueError):
    """Missing or malformed credentials; the message never contains a secret."""


class Credentials:
    __slots__ = ("_app_key", "_app_secret", "cano", "acnt_prdt_cd", "hts_id")

    def __init__(self, app_key: str, app_secret: str, account: str, hts_id: str) -> None:
        if not app_key or not app_secret:
            raise CredentialsError("app_key and app_secret are required")
        cano, sep, prdt = account.strip().partition("-")
        if not sep:  # also accept the 10-digit form CANO+ACNT_PRDT_CD
            cano, prdt = account[:8], account[8:]
        if not (cano.isdigit() and len(cano) == 8 and prdt.isdigit() and len(prdt) == 2):
            raise CredentialsError("account must be 'CANO-ACNT_PRDT_CD' (8 digits, dash, 2 digits)")
        self._app_key = app_key
        self._app_secret = app_secret
        self.cano = cano
        self.acnt_prdt_cd = prdt
        # HTS ids are used verbatim: a leading '$' or the case matters to KIS (API.md §8.16).
        self.hts_id = hts_id

    @property
    def app_key(self) -> str:
        return self._app_key

    @property
    def app_secret(self) -> str:
        return self._app_secret

    @property
    def account(self) -> str:
        return f"{self.cano}-{self.acnt_prdt_cd}"

    @property
    def masked_account(self) -> str:
        """The account as logs may show it: the first two and the product code."""
        return f"{self.cano[:2]}******-{self.acnt_prdt_cd}"

    @property
    def key_fingerprint(self) -> str:
        """A short stable hash of the app key: safe for file names and logs."""
        return hashlib.sha256(self._app_key.encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"Credentials(app_key=<{self.key_fingerprint}>, account={self.masked_account})"

    __str__ = __repr__

    def __reduce__(self):  # no pickling of secrets
        raise TypeError("Credentials cannot be pickled")


def load_credentials(credentials_file: str | os.PathLike[str] | None = None) -> Credentials:
    """Environment variables win over the TOML file (keys app_key, app_secret, account, hts_id)."""
    values: dict[str, str] = {}
    if credentials_file:
        path = Path(credentials_file).expanduser()
        try:
            # utf-8-sig: a BOM (Windows Notepad) is dropped, not read as part of the first key
            raw = tomllib.loads(path.read_bytes().decode("utf-8-sig"))
        except OSError as e:
            raise CredentialsError(f"{path}: cannot read credentials file: {e.strerror}") from None
        except UnicodeDecodeError:  # e.g. CP949 with Korean comments; no details: they may quote a secret
            raise CredentialsError(f"{path}: not UTF-8 (CP949/EUC-KR?): save it as UTF-8") from None
        except tomllib.TOMLDecodeError:
            raise CredentialsError(f"{path}: not valid TOML") from None  # no details: they may quote a secret
        values = {k: str(v) for k, v in raw.items() if k in ("app_key", "app_secret", "account", "hts_id")}
        _warn_if_exposed(path)
    for key, var in (
        ("app_key", ENV_APP_KEY),
        ("app_secret", ENV_APP_SECRET),
        ("account", ENV_ACCOUNT),
        ("hts_id", ENV_HTS_ID),
    ):
        if os.environ.get(var):
            values[key] = os.environ[var]
    env_of = {"app_key": ENV_APP_KEY, "app_secret": ENV_APP_SECRET, "account": ENV_ACCOUNT, "hts_id": ENV_HTS_ID}
    missing = [k for k in ("app_key", "app_secret", "account", "hts_id") if not values.get(k)]
    if missing:
        where = f" in {credentials_file} or" if credentials_file else ""
        raise CredentialsError(
            f"missing {', '.join(missing)} (not set{where} in {', '.join(env_of[k] for k in missing)})"
        )
    return Credentials(values["app_key"], values["app_secret"], values["account"], values["hts_id"])


def _warn_if_exposed(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("credentials file %s is readable by group/others; chmod 600 it", path)
    for parent in path.resolve().parents:
        if (parent / ".git").exists():
            log.warning("credentials file %s is inside a git work tree (%s); keep it outside the repo", path, parent)
            break
