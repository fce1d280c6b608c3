"""Alerts from the nightly: a webhook POST and a mail, as `notify:` configures them.

`notify.on` says which nights: `failure` (the run failed, or infra validation refused the
model: both mean something is broken that a person must fix), `push` (those, and nights
that pushed a version) or `always`. The webhook gets a JSON POST with a Slack-compatible
`text` (the nightly's one-line summary) and every field of `nightly_summary.json`; the mail
has the line as its subject's source and the summary as its body. The webhook URL may
come from MNIST_PIPELINE_WEBHOOK_URL (a Slack URL is a secret, and the configuration is
recorded in run.json); SMTP credentials come only from MNIST_PIPELINE_SMTP_USER and
MNIST_PIPELINE_SMTP_PASSWORD. Standard library only. A notification that cannot be
delivered is one warning line in the log and never changes the night's exit status.
"""
from __future__ import annotations

import json
import logging
import os
import smtplib
import ssl
import urllib.error
import urllib.parse
import urllib.request
from email.message import EmailMessage

log = logging.getLogger("pipeline")
WEBHOOK_ENV = "MNIST_PIPELINE_WEBHOOK_URL"
SMTP_USER_ENV, SMTP_PASSWORD_ENV = "MNIST_PIPELINE_SMTP_USER", "MNIST_PIPELINE_SMTP_PASSWORD"
INFRA_REFUSED = "infra validation failed"  # components/infra_validator.REFUSED, in export's not_pushed_because


def url_problem(url: str) -> str | None:
    """Why `url` is not a webhook this module will POST to; None when it is one."""
    if any(ord(c) <= 32 or ord(c) == 127 for c in url):
        return "a webhook URL holds no spaces or control characters"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises on a port that is not a number in range)
    except ValueError as err:
        return f"a webhook must be an http:// or https:// URL ({err})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return (f"a webhook must be an http:// or https:// URL with a host "
                f"(this one's scheme is {parts.scheme or 'missing'!r})")
    return None


def _shown(url: str) -> str:
    """A URL as the log may show it: scheme, host and port; its path may be a secret (Slack's is)."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(an unreadable URL)"
    return f"{parts.scheme}://{parts.hostname or ''}{port}" if parts.scheme in ("http", "https") else "(not an http URL)"


def event(summary: dict) -> str:
    """`failure`, `push` or `night` (neither)."""
    if summary.get("status") != "succeeded" or INFRA_REFUSED in (summary.get("push_decision") or ""):
        return "failure"
    return "push" if summary.get("pushed") is not None else "night"


def wanted(on: str, summary: dict) -> bool:
    happened = event(summary)
    return on == "always" or happened == "failure" or (on == "push" and happened == "push")


def payload(summary: dict, line: str) -> dict:
    return {"text": line, "event": event(summary), **summary}


def subject(summary: dict) -> str:
    happened = event(summary)
    if happened == "push":
        return f"MNIST nightly: pushed version {summary['pushed']} (run {summary.get('run_id')})"
    what = "FAILED" if summary.get("status") != "succeeded" else ("model refused" if happened == "failure" else "done")
    return f"MNIST nightly {what}: run {summary.get('run_id')}"


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a redirect is an error: the POST goes where it was configured
        return None


def post_webhook(url: str, body: dict, timeout_s: float) -> int:
    request = urllib.request.Request(url, data=json.dumps(body, default=str).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "mnist-pipeline"})
    with urllib.request.build_opener(_NoRedirects).open(request, timeout=timeout_s) as response:
        return response.status


def send_mail(smtp_cfg, summary: dict, line: str, timeout_s: float) -> None:
    message = EmailMessage()
    message["Subject"] = subject(summary)
    message["From"] = smtp_cfg.sender
    message["To"] = ", ".join(smtp_cfg.recipients)
    message.set_content(f"{line}\n\n{json.dumps(summary, indent=2, default=str)}\n")
    user, password = os.environ.get(SMTP_USER_ENV), os.environ.get(SMTP_PASSWORD_ENV)
    with smtplib.SMTP(smtp_cfg.host, smtp_cfg.port, timeout=timeout_s) as smtp:
        if smtp_cfg.starttls:
            smtp.starttls(context=ssl.create_default_context())
        if user and password:
            smtp.login(user, password)
        elif user or password:
            raise ValueError(f"set both {SMTP_USER_ENV} and {SMTP_PASSWORD_ENV}, or neither")
        smtp.send_message(message)


def send(cfg, summary: dict, line: str) -> list[str]:
    """Delivers the night's notifications that `cfg` (the `notify:` section) asks for; returns
    the channels that got it. Never raises: a failed delivery is one warning line."""
    try:
        return _send(cfg, summary, line)
    except Exception as err:  # the night's outcome is decided; telling it must not change it
        log.warning("notify: nothing was sent (%s); the night's exit status is unchanged", _reason(err))
        return []


def _send(cfg, summary: dict, line: str) -> list[str]:
    if not wanted(cfg.on, summary):
        return []
    delivered = []
    url = cfg.webhook or os.environ.get(WEBHOOK_ENV, "")
    if url:
        try:
            problem = url_problem(url)
            if problem:
                raise ValueError(f"{WEBHOOK_ENV}: {problem}")
            post_webhook(url, payload(summary, line), cfg.timeout_s)
            delivered.append("webhook")
        except Exception as err:
            log.warning("notify: the webhook %s was not reached (%s); the night's exit status is unchanged",
                        _shown(url), _reason(err))
    if cfg.smtp.host:
        try:
            send_mail(cfg.smtp, summary, line, cfg.timeout_s)
            delivered.append("mail")
        except Exception as err:
            log.warning("notify: no mail went to %s via %s:%d (%s); the night's exit status is unchanged",
                        ", ".join(cfg.smtp.recipients), cfg.smtp.host, cfg.smtp.port, _reason(err))
    if delivered:
        log.info("notify: the night was reported by %s", " and ".join(delivered))
    return delivered


def _reason(err: Exception) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        err = err.reason if isinstance(err.reason, Exception) else err
    text = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {text}"[:300] if text else type(err).__name__
