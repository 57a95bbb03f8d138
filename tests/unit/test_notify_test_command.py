"""`ktrader notify-test`: a person setting up Telegram, Slack or e-mail learns before a real alert which channel
reaches them and why another does not (real receivers on loopback)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from tests.fakes.sinks import HttpSink, SmtpSink
from tools.cli import app


def test_each_channel_is_told_delivered_or_why_not(tmp_path: Path) -> None:
    ok, refused, smtp = HttpSink(), HttpSink(status=400), SmtpSink()
    try:
        cfg = tmp_path / "gateway.toml"
        cfg.write_text(
            f'run_dir = "{tmp_path / "run"}"\n'
            f'[[notify.webhooks]]\nurl = "{ok.url}"\n'
            f'[[notify.webhooks]]\nurl = "{refused.url}"\nshape = "slack"\n'
            f'[[notify.smtp]]\nhost = "127.0.0.1"\nport = {smtp.port}\nsender = "k@localhost"\n'
            'to = ["desk@localhost"]\n'
        )
        out = CliRunner().invoke(app, ["notify-test", "--config", str(cfg)])
        assert out.exit_code == 1, out.output
        lines = out.output.splitlines()
        assert "webhook:json: delivered" in lines and f"smtp:127.0.0.1:{smtp.port}: delivered" in lines, lines
        assert any(
            line.startswith("webhook:slack: NOT delivered: HTTP 400") and "a configuration problem" in line
            for line in lines
        ), lines
        assert len(ok.bodies) == 1 and "ktrader notify-test" in ok.bodies[0]["text"]
        assert len(smtp.mails) == 1
        (tmp_path / "none.toml").write_text(f'run_dir = "{tmp_path / "run"}"\n')
        none = CliRunner().invoke(app, ["notify-test", "--config", str(tmp_path / "none.toml")])
        assert none.exit_code == 2 and "no channel in [notify]" in none.output
    finally:
        ok.close()
        refused.close()
        smtp.close()
