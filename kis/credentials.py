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


KEYS = ("app_key", "app_secret", "account", "hts_id")
ENV_OF = {"app_key": ENV_APP_KEY, "app_secret": ENV_APP_SECRET, "account": ENV_ACCOUNT, "hts_id": ENV_HTS_ID}
APP_KEY_LENGTH, APP_SECRET_LENGTH = 36, 180  # what KIS issues (API.md §2.1)


class CredentialsError(ValueError):
    """Missing or malformed credentials; the message never contains a secret."""


def mask(text: str) -> str:
    """What logs and screens may show of an identifier (the account number, the HTS id): its first two
    characters (at most half of it), the rest starred."""
    keep = min(2, len(text) // 2)
    return text[:keep] + "*" * (len(text) - keep)


class Credentials:
    __slots__ = ("_app_key", "_app_secret", "cano", "acnt_prdt_cd", "hts_id", "sources")

    def __init__(self, app_key: str, app_secret: str, account: str, hts_id: str) -> None:
        if not app_key or not app_secret:
            raise CredentialsError("app_key and app_secret are required")
        account = account.strip()  # (a '\r' from a CRLF env file: the account alone is read, never sent as typed)
        cano, sep, prdt = account.partition("-")
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
        # where each value came from (key -> "$VARIABLE" or the file's path; never a value): load_credentials
        self.sources: dict[str, str] = {}

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
        return f"{mask(self.cano)}-{self.acnt_prdt_cd}"

    @property
    def masked_hts_id(self) -> str:
        """The HTS id as logs may show it (masked like the account: it is the notice feed's key)."""
        return mask(self.hts_id)

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
    """Environment variables win over the TOML file (keys app_key, app_secret, account, hts_id). Logs
    where each value came from (the file's path or the variable's name, never a value), and warns when
    a variable overrides a different value in the file: a leftover `export` otherwise looks like a wrong
    file (e.g. KIS's EGW02004 for a paper key the file does not hold)."""
    from_file: dict[str, str] = {}
    path: Path | None = None
    if credentials_file:
        path = Path(credentials_file).expanduser()
        from_file = _read_file(path)
        _warn_if_exposed(path)
    values = dict(from_file)
    sources = {k: str(path) for k in from_file if from_file[k]}
    for key in KEYS:
        var = ENV_OF[key]
        if os.environ.get(var):
            values[key] = os.environ[var]
            sources[key] = f"${var}"
    missing = [k for k in KEYS if not values.get(k)]
    if missing:
        where = f" in {credentials_file} or" if credentials_file else ""
        raise CredentialsError(
            f"missing {', '.join(missing)} (not set{where} in {', '.join(ENV_OF[k] for k in missing)})"
        )
    for key in ("app_key", "app_secret", "hts_id"):  # (the account is read, stripped, in Credentials)
        if why := value_problem(values[key]):
            source = sources[key]
            raise CredentialsError(f"{source[1:] if source.startswith('$') else f'{key} in {source}'} {why}")
    creds = Credentials(values["app_key"], values["app_secret"], values["account"], values["hts_id"])
    creds.sources = sources
    _log_sources(sources, from_file, values, path)
    return creds


def value_problem(value: str) -> str:
    """Why a credential cannot be sent to KIS as it is ("" none): a control character (a '\\r' left by a CRLF env
    file: an app key so ended failed the start in httpx, 'unexpected ValueError', exit 1) or surrounding spaces (an
    HTS id so padded started, and never got the order/fill notice feed). Never quotes the value."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "has a control character (a '\\r' from a CRLF file?)"
    if value != value.strip():
        return "has surrounding spaces"
    return ""


def length_problems(creds: Credentials) -> list[str]:
    """App key and secret lengths other than KIS issues: a value cut or pasted twice (`ktrader doctor` says so; KIS
    could one day issue others, so the gateway's start leaves the verdict to KIS)."""
    problems = []
    if len(creds.app_key) != APP_KEY_LENGTH:
        problems.append(f"app key has {len(creds.app_key)} characters, KIS issues {APP_KEY_LENGTH}")
    if len(creds.app_secret) != APP_SECRET_LENGTH:
        problems.append(f"app secret has {len(creds.app_secret)} characters, KIS issues {APP_SECRET_LENGTH}")
    return problems


def _read_file(path: Path) -> dict[str, str]:
    try:
        # utf-8-sig: a BOM (Windows Notepad) is dropped, not read as part of the first key
        raw = tomllib.loads(path.read_bytes().decode("utf-8-sig"))
    except OSError as e:
        raise CredentialsError(f"{path}: cannot read credentials file: {e.strerror}") from None
    except UnicodeDecodeError:  # e.g. CP949 with Korean comments; no details: they may quote a secret
        raise CredentialsError(f"{path}: not UTF-8 (CP949/EUC-KR?): save it as UTF-8") from None
    except tomllib.TOMLDecodeError:
        raise CredentialsError(f"{path}: not valid TOML") from None  # no details: they may quote a secret
    return {k: str(v) for k, v in raw.items() if k in KEYS}


def _log_sources(sources: dict[str, str], from_file: dict[str, str], values: dict[str, str], path: Path | None) -> None:
    """One line: where each value came from; a warning per variable that overrides a different file value."""
    if all(sources[k].startswith("$") for k in KEYS):
        said = "from the variables " + ", ".join(ENV_OF[k] for k in KEYS)
    elif len(set(sources.values())) == 1:
        said = f"from credentials_file {path}"
    else:
        said = ", ".join(f"{k} from {sources[k]}" for k in KEYS)
    log.info("KIS credentials %s", said)
    for key in KEYS:
        if path is not None and from_file.get(key) and sources[key].startswith("$") and from_file[key] != values[key]:
            log.warning(
                "%s is set and overrides a different %s in credentials_file %s: `unset %s` to use the file's",
                ENV_OF[key],
                key,
                path,
                ENV_OF[key],
            )


def env_override_note(key: str = "app_key") -> str:
    """Said with a refusal KIS blames on a credential: when the environment variable for `key` is set, the
    value came from it, not from credentials_file ("" when it is not set)."""
    var = ENV_OF[key]
    if not os.environ.get(var):
        return ""
    what = key.replace("_", " ")
    return f"the {what} came from ${var}, which overrides credentials_file (unset {var} to use the file's)"


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
