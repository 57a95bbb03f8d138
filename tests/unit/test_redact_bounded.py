"""Secrets renewed every day (access tokens, approval keys) do not pile up in the redaction list (each is
scanned for every log line): the last few of each label are kept, the latest always redacted."""

from __future__ import annotations

from common import redact


def test_renewed_secrets_are_redacted_and_the_list_stays_bounded() -> None:
    label = "test-token-bounded"
    for day in range(60):
        redact.register(f"token-of-day-{day:04d}", label)
    assert len(redact._by_label[label]) == redact.KEEP_PER_LABEL
    assert sum(1 for v in redact._secrets.values() if v == label) == redact.KEEP_PER_LABEL
    assert redact.redact("sent token-of-day-0059 and token-of-day-0057") == f"sent <{label}> and <{label}>"
    assert redact.redact("token-of-day-0001") == "token-of-day-0001"  # weeks old: no longer scanned for
