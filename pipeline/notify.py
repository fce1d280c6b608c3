"""Alerts from the nightly: a webhook POST and a mail, as `notify:` configures them.

`notify.on` says which nights: `failure` (the run failed or was stopped, or infra validation
refused the model: all mean something is broken that a person must fix; and the night after
one that never finished), `push` (those, and nights that pushed a version) or `always`. The
webhook gets a JSON POST with a Slack-compatible `text` (the nightly's one-line summary) and
every field of `nightly_summary.json`; the mail has the line as its subject's source and the
summary as its body. The webhook URL may
come from MNIST_PIPELINE_WEBHOOK_URL (a Slack URL is a secret, and the configuration is
recorded in run.json); SMTP credentials come only from MNIST_PIPELINE_SMTP_USER and
MNIST_PIPELINE_SMTP_PASSWORD. Standard library only. `notify.timeout_s` bounds the whole
delivery, connect to last byte, webhook and mail together (a server that trickles its answer
is cut off at the deadline). A notification that cannot be delivered is one warning line in
the log and never changes the night's exit status.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import smtplib
import socket
import ssl
import threading
import time
import urllib.parse
from email.message import EmailMessage

from pipeline.console import printable

log = logging.getLogger("pipeline")
WEBHOOK_ENV = "MNIST_PIPELINE_WEBHOOK_URL"
SMTP_USER_ENV, SMTP_PASSWORD_ENV = "MNIST_PIPELINE_SMTP_USER", "MNIST_PIPELINE_SMTP_PASSWORD"
ANSWER_BYTES = 64 * 1024  # read of a webhook's answer: only its status matters
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
    """Always a failure, and a night after one that never finished: a kill -9 could tell nobody."""
    happened = event(summary)
    return (on == "always" or happened == "failure" or bool(summary.get("interrupted"))
            or (on == "push" and happened == "push"))


def payload(summary: dict, line: str) -> dict:
    return {"text": line, "event": event(summary), **summary}


def subject(summary: dict) -> str:
    """What happened, in a mail's subject: pushed, not pushed and why, failed or stopped in which step."""
    happened = event(summary)
    run = f"(run {summary.get('run_id')})" + (" after an interrupted night" if summary.get("interrupted") else "")
    if happened == "push":
        return f"MNIST nightly: pushed version {summary['pushed']} {run}"
    status = summary.get("status")
    if status != "succeeded":
        step = f" in {summary['failed_step']}" if summary.get("failed_step") else ""
        return f"MNIST nightly {'STOPPED' if status == 'terminated' else 'FAILED'}{step} {run}"
    first = (summary.get("push_decision") or "not pushed").split("; ")[0]
    return f"MNIST nightly: {first if len(first) <= 120 else first[:117] + '...'} {run}"


class DeliveryError(RuntimeError):
    """The server answered, but not with success."""


def _within(timeout_s: float, deliver):
    """`deliver(connections)` in a worker thread, `timeout_s` at most in all, connect to last
    byte. A socket timeout bounds each read, not a server that trickles one byte at a time; at
    the deadline the connections the worker registered are shut, which ends its blocked read."""
    connections, outcome = [], {}

    def work() -> None:
        try:
            outcome["value"] = deliver(connections)
        except BaseException as err:  # handed to the caller's thread
            outcome["error"] = err

    worker = threading.Thread(target=work, name="notify-delivery", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        for connection in connections:
            with contextlib.suppress(OSError, AttributeError):
                socket.socket.shutdown(connection.sock, socket.SHUT_RDWR)
        raise TimeoutError("no complete answer before the notify.timeout_s deadline")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def post_webhook(url: str, body: dict, timeout_s: float) -> int:
    """POSTs `body` as JSON; a redirect is an error too: the POST goes where it was configured."""
    parts = urllib.parse.urlsplit(url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    data = json.dumps(body, default=str).encode()

    def deliver(connections: list) -> int:
        connection = kind(parts.hostname, parts.port, timeout=timeout_s)
        connections.append(connection)
        try:
            connection.request("POST", target, body=data,
                               headers={"Content-Type": "application/json", "User-Agent": "mnist-pipeline"})
            response = connection.getresponse()
            response.read(ANSWER_BYTES)
            if not 200 <= response.status < 300:
                raise DeliveryError(f"HTTP {response.status} {printable(response.reason[:100])}")
            return response.status
        finally:
            connection.close()

    return _within(timeout_s, deliver)


def send_mail(smtp_cfg, summary: dict, line: str, timeout_s: float) -> None:
    message = EmailMessage()
    message["Subject"] = subject(summary)
    message["From"] = smtp_cfg.sender
    message["To"] = ", ".join(smtp_cfg.recipients)
    message.set_content(f"{line}\n\n{json.dumps(summary, indent=2, default=str)}\n")
    user, password = os.environ.get(SMTP_USER_ENV), os.environ.get(SMTP_PASSWORD_ENV)
    if bool(user) != bool(password):
        raise ValueError(f"set both {SMTP_USER_ENV} and {SMTP_PASSWORD_ENV}, or neither")

    def deliver(connections: list) -> None:
        smtp = smtplib.SMTP(timeout=timeout_s)  # connected below, once the deadline can reach its socket
        connections.append(smtp)
        try:
            smtp.connect(smtp_cfg.host, smtp_cfg.port)
            if smtp_cfg.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if user and password:
                smtp.login(user, password)
            smtp.send_message(message)
            smtp.quit()
        finally:
            smtp.close()

    _within(timeout_s, deliver)


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
    deadline = time.monotonic() + cfg.timeout_s  # one for the whole delivery, webhook and mail together

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"notify.timeout_s={cfg.timeout_s:g}s was spent before this channel's turn")
        return remaining

    url = cfg.webhook or os.environ.get(WEBHOOK_ENV, "")
    if url:
        try:
            problem = url_problem(url)
            if problem:
                raise ValueError(f"{WEBHOOK_ENV}: {problem}")
            post_webhook(url, payload(summary, line), left())
            delivered.append("webhook")
        except Exception as err:
            log.warning("notify: the webhook %s was not reached (%s); the night's exit status is unchanged",
                        _shown(url), _reason(err))
    if cfg.smtp.host:
        try:
            send_mail(cfg.smtp, summary, line, left())
            delivered.append("mail")
        except Exception as err:
            log.warning("notify: no mail went to %s via %s:%d (%s); the night's exit status is unchanged",
                        ", ".join(cfg.smtp.recipients), cfg.smtp.host, cfg.smtp.port, _reason(err))
    if delivered:
        log.info("notify: the night was reported by %s", " and ".join(delivered))
    return delivered


def _reason(err: Exception) -> str:
    """One line, bounded and escaped: a server's words are not ours to print as they are."""
    if isinstance(err, DeliveryError):
        return str(err)
    text = printable((str(err).strip().splitlines() or [""])[0])
    return f"{type(err).__name__}: {text}"[:300] if text else type(err).__name__
