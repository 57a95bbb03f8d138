"""Secrets never reach a log line: the KIS client registers each secret it holds (app key, app
secret, access token, approval key, account number) and `RedactSecrets`, a logging filter on the
process's handlers, replaces any of them in a record's final text. The code already avoids logging
them; this catches what a library or an exception message might echo (KIS itself echoes the
approval key in OPSP0011, python's ssl/httpx errors may quote a URL)."""

from __future__ import annotations

import logging
import threading

_lock = threading.Lock()
_secrets: dict[str, str] = {}  # value -> label
_by_label: dict[str, list[str]] = {}  # label -> its values, oldest first
MIN_LEN = 6  # shorter strings would redact ordinary words and numbers
# values kept per label: a token or approval key renewed every day would otherwise pile up for weeks
# (each scanned for every log line); the last few still cover an error quoting the one just replaced
KEEP_PER_LABEL = 4


def register(value: str, label: str) -> None:
    """Treat `value` as a secret from now on (a no-op for short or empty values)."""
    if value and len(value) >= MIN_LEN:
        with _lock:
            _secrets[value] = label
            kept = _by_label.setdefault(label, [])
            if value in kept:
                kept.remove(value)
            kept.append(value)
            while len(kept) > KEEP_PER_LABEL:
                old = kept.pop(0)
                if _secrets.get(old) == label:
                    del _secrets[old]


def redact(text: str) -> str:
    if not _secrets:
        return text
    for value, label in list(_secrets.items()):
        if value in text:
            text = text.replace(value, f"<{label}>")
    return text


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not _secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:
            return True
        clean = redact(message)
        if record.exc_info and record.exc_info[1] is not None:
            exc_text = logging.Formatter().formatException(record.exc_info)
            clean_exc = redact(exc_text)
            if clean_exc != exc_text:
                record.exc_info = None
                record.exc_text = clean_exc
        if clean != message:
            record.msg, record.args = clean, None
        return True
