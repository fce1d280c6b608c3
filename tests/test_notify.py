"""Alerts from the nightly: a loopback webhook and a local SMTP server the tests start themselves."""
import email
import email.policy
import json
import logging
import queue
import shutil
import socket
import threading
import time

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from filelock import FileLock, Timeout

from conftest import small_overrides
from pipeline import notify
from pipeline.config import ConfigError, load_config
from pipeline.nightly import LOCK, nightly

WAIT_S = 30  # bounded: a notification that never comes fails the test, it does not hang it
FAIL = {"validation.min_examples": 100000}  # the night stops at validate, in seconds


@pytest.fixture
def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


@pytest.fixture
def smtp_server():
    """A local SMTP server (aiosmtpd) that accepts any login; yields (port, mails, logins)."""
    mails, logins = queue.Queue(), []

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            mails.put((envelope.mail_from, envelope.rcpt_tos, envelope.content.decode()))
            return "250 OK"

    def authenticator(server, session, envelope, mechanism, auth_data):
        logins.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=True)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    controller = Controller(Handler(), hostname="127.0.0.1", port=port, authenticator=authenticator,
                            auth_require_tls=False)
    controller.start()
    yield port, mails, logins
    controller.stop()


def _notify_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.getMessage().startswith("notify")]


def test_a_failing_nightly_posts_the_run_and_its_error(store, tfds_dir, webhook, capsys):
    url, received = webhook
    status, summary = nightly(load_config(small_overrides(tfds_dir, **FAIL, **{"notify.webhook": url})), store)
    assert status == 1 and summary["status"] == "failed"
    path, content_type, body = received.get(timeout=WAIT_S)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert path == "/hooks/T000/secret" and content_type == "application/json"
    assert body["text"].splitlines()[0] == line and line.startswith(f"nightly failed: run {summary['run_id']}")
    assert body["event"] == "failure" and body["run_id"] == summary["run_id"]
    assert body["error"] == summary["error"] and "data validation failed" in body["error"]
    assert {k: body[k] for k in summary} == json.loads(json.dumps(summary))  # every field of the summary


def test_a_pushing_nightly_posts_and_mails_when_configured_for_push(store, tfds_dir, webhook, smtp_server,
                                                                    monkeypatch):
    url, received = webhook
    port, mails, logins = smtp_server
    shutil.rmtree(store / "serving")  # nothing served now, and a new export setting: the cached model is pushed
    monkeypatch.setenv(notify.SMTP_USER_ENV, "pipeline")
    monkeypatch.setenv(notify.SMTP_PASSWORD_ENV, "s3cret")
    cfg = load_config(small_overrides(tfds_dir, **{
        "export.infra_latency_requests": 20, "notify.on": "push", "notify.webhook": url, "notify.smtp.host": "127.0.0.1", "notify.smtp.port": port,
        "notify.smtp.sender": "pipeline@example.com", "notify.smtp.recipients": "[ops@example.com, ml@example.com]",
        "notify.smtp.starttls": "false"}))
    status, summary = nightly(cfg, store)
    assert status == 0 and summary["pushed"] == 1
    _, _, body = received.get(timeout=WAIT_S)
    assert body["event"] == "push" and body["pushed"] == 1 and "pushed version 1" in body["text"]
    sender, recipients, content = mails.get(timeout=WAIT_S)
    assert sender == "pipeline@example.com" and recipients == ["ops@example.com", "ml@example.com"]
    mail = email.message_from_string(content, policy=email.policy.default)
    assert mail["Subject"] == f"MNIST nightly: pushed version 1 (run {summary['run_id']})"
    text = mail.get_content().replace("\r\n", "\n")
    assert text.startswith(body["text"] + "\n\n") and json.loads(text.split("\n\n", 1)[1])["pushed"] == 1
    assert logins == [("pipeline", "s3cret")]  # from the environment; the configuration has no credentials
    assert "s3cret" not in json.dumps(cfg.model_dump())


def test_a_night_that_is_not_asked_for_sends_nothing(store, tfds_dir, webhook):
    url, received = webhook
    status, summary = nightly(load_config(small_overrides(tfds_dir, **{"notify.webhook": url})), store)
    assert status == 0 and summary["status"] == "succeeded"  # nothing new: on=failure says nothing
    with pytest.raises(queue.Empty):
        received.get(timeout=1)


def test_an_unreachable_webhook_is_logged_and_the_exit_status_stays(store, tfds_dir, closed_port, caplog):
    url = f"http://127.0.0.1:{closed_port}/hooks/T000/secret"
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        failed, _ = nightly(load_config(small_overrides(tfds_dir, **FAIL, **{"notify.webhook": url})), store)
        worked, _ = nightly(load_config(small_overrides(tfds_dir, **{"notify.webhook": url, "notify.on": "always"})),
                            store)
    assert (failed, worked) == (1, 0)  # what they are without a webhook
    warnings = _notify_warnings(caplog)
    assert len(warnings) == 2 and all(w.startswith(f"notify: the webhook http://127.0.0.1:{closed_port} was not "
                                                   f"reached (ConnectionRefusedError") for w in warnings)
    assert not any("secret" in w for w in warnings)  # the path of a Slack URL is its secret


def test_mail_that_cannot_go_is_one_warning(smtp_server, caplog):
    port, mails, _ = smtp_server
    cfg = load_config(["notify.on=always", "notify.smtp.host=127.0.0.1", f"notify.smtp.port={port}",
                       "notify.smtp.sender=p@example.com", "notify.smtp.recipients=[o@example.com]",
                       "notify.smtp.starttls=true"]).notify  # the server offers no STARTTLS
    summary = {"run_id": "r", "status": "succeeded", "pushed": None, "push_decision": "not pushed: ..."}
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        assert notify.send(cfg, summary, "nightly succeeded: run r") == []
    [warning] = _notify_warnings(caplog)
    assert warning.startswith(f"notify: no mail went to o@example.com via 127.0.0.1:{port} (SMTPNotSupportedError")
    assert mails.empty()


def test_which_nights_are_told():
    failed = {"status": "failed", "pushed": None, "push_decision": "not pushed: the run failed (...)"}
    pushed = {"status": "succeeded", "pushed": 3, "push_decision": "pushed version 3"}
    refused = {"status": "succeeded", "pushed": None,
               "push_decision": "not pushed: infra validation failed: loading the SavedModel took longer than 60s"}
    quiet = {"status": "succeeded", "pushed": None, "push_decision": "not pushed: nothing changed since run x"}
    table = {on: [notify.wanted(on, s) for s in (failed, pushed, refused, quiet)] for on in ("failure", "push", "always")}
    assert table == {"failure": [True, False, True, False], "push": [True, True, True, False],
                     "always": [True, True, True, True]}
    from components.serving.infra_validator import REFUSED
    assert REFUSED == notify.INFRA_REFUSED


@pytest.mark.parametrize("setting, message", [
    ("notify.webhook=file:///etc/passwd", "scheme is 'file'"),
    ("notify.webhook=http:///no-host", "with a host"),
    ("notify.webhook=https://h:99999/x", "http:// or https:// URL"),
    ("notify.on=sometimes", "notify.on"),
    ("notify.smtp.host=mail.example.com", "notify.smtp.sender must be a mail address"),
])
def test_notify_settings_are_checked_before_anything_runs(setting, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("/", "/")):
        load_config([setting])


@pytest.fixture
def trickling_webhook(store):
    """A loopback server that reads the POST, notes whether the nightly lock is free, then answers
    one header byte every 0.5 s (bounded: 60 bytes at most, and it stops when the client goes)."""
    seen: queue.Queue = queue.Queue()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(WAIT_S)

    def serve():
        try:
            connection, _ = listener.accept()
        except OSError:
            return
        with connection:
            connection.settimeout(WAIT_S)
            request = b""
            while b"\r\n\r\n" not in request:
                request += connection.recv(65536)
            try:
                FileLock(store / LOCK).acquire(timeout=0).lock.release()
                lock_free = True
            except Timeout:
                lock_free = False
            seen.put((time.monotonic(), lock_free))
            for byte in b"HTTP/1.1 200 OK\r\n" * 4:
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    return  # the client hung up: the deadline worked
                time.sleep(0.5)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook", seen
    listener.close()
    thread.join(WAIT_S)


def test_a_trickling_webhook_is_cut_off_at_the_deadline_with_the_lock_already_free(store, tfds_dir,
                                                                                   trickling_webhook, caplog):
    url, seen = trickling_webhook
    cfg = load_config(small_overrides(tfds_dir, **FAIL, **{"notify.webhook": url, "notify.timeout_s": 2}))
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        status, _ = nightly(cfg, store)
    returned = time.monotonic()
    asked, lock_free = seen.get(timeout=WAIT_S)
    assert status == 1 and lock_free  # the next night could have started while this one was alerting
    assert returned - asked < 2 + 1  # notify.timeout_s for the whole delivery, not per byte
    [warning] = _notify_warnings(caplog)
    assert "(TimeoutError: no complete answer before the notify.timeout_s deadline)" in warning


def test_a_failure_alert_says_what_failed_against_the_last_good_night_and_what_to_run(store, tfds_dir, webhook):
    url, received = webhook
    good_status, good = nightly(load_config(small_overrides(tfds_dir)), store)  # cached: a good night
    assert good_status == 0
    status, summary = nightly(load_config(small_overrides(tfds_dir, **FAIL, **{"notify.webhook": url})), store)
    assert status == 1
    _, _, body = received.get(timeout=WAIT_S)
    lines = body["text"].splitlines()
    assert lines[1].startswith("what failed: data validation failed, training not started: empty_split")
    assert any(line.startswith("failed check: empty_split (") and "validation.min_examples" in line for line in lines)
    served = json.loads((store / "serving" / "mnist" / "1" / "assets.extra" / "push.json").read_text())
    assert (f"data: train 2000 (extra images 0) test 500; the last good night (run {good['run_id']}): "
            f"train 2000 (extra images 0) test 500") in lines
    assert f"serving: version 1, test accuracy {served['test_accuracy']:.2%}" in lines
    assert f"host {socket.gethostname()}; report {store / 'runs' / summary['run_id'] / 'report.html'}" in lines
    assert lines[-1].startswith(f"next: open {store / 'runs' / summary['run_id'] / 'report.html'}#validation")
    assert notify.subject(summary) == f"MNIST nightly FAILED in validate (run {summary['run_id']})"
    assert good["push_decision"].startswith("not pushed: nothing changed since run")
    assert notify.subject(good) == f"MNIST nightly: {good['push_decision']} (run {good['run_id']})"


def test_an_undelivered_alert_is_in_the_runs_log_too(store, tfds_dir, closed_port):
    url = f"http://127.0.0.1:{closed_port}/hooks/T000/secret"
    _, summary = nightly(load_config(small_overrides(tfds_dir, **FAIL, **{"notify.webhook": url})), store)
    run_log = (store / "runs" / summary["run_id"] / "run.log").read_text()
    assert f"WARNING pipeline: notify: the webhook http://127.0.0.1:{closed_port} was not reached" in run_log
