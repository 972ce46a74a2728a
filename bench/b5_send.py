"""B5: send throughput through the API, vs Postfix's smtp-source, at the same concurrency.

The project: drafts of about 8 KiB made with `POST /api/compose` (untimed), then each sent
with `POST /api/compose/{id}/send` by C client threads over two API processes, delivered by
C + 1 `emailservice worker send` processes (the tenant may occupy C of them) over SMTP
submission (STARTTLS + AUTH through Dovecot) to the stack's Postfix;
the time runs until every outbox entry is `sent`. The comparator: `smtp-source -s C` sending
the same number of 8 KiB messages. smtp-source speaks neither STARTTLS nor AUTH, which the
submission port requires (smtpd_tls_security_level=encrypt), so it sends into the same
Postfix's port-25 listener: the same smtpd, cleanup, queue and LMTP delivery to Dovecot,
without the TLS handshake and AUTH the project pays per connection. The same run measures
the send ceiling of Python here: C processes, each one kept submission session (STARTTLS +
AUTH) sending the same number of same-size messages with smtplib, without API, database or
queue.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from contextlib import ExitStack

from sqlalchemy import text

from bench.corpus import Generator
from bench.lab import BIN, Lab
from bench.report import Result
from bench.stats import Row, failed, percentile, summarize

CONCURRENCY = 4
# API processes, as the deploy runs them on a host (inventories/group_data/all.py's
# api_instances); the client threads take them in turn, as the deploy's nginx does.
API_PROCESSES = 2
SIZES = {True: {"messages": 150, "reps": 3}, False: {"messages": 5000, "reps": 3}}
BODY_BYTES = 8 * 1024


def call(base: str, method: str, path: str, headers: dict, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        base + path,
        data=data,
        method=method,
        headers={**headers, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, {}


def available(base: str, headers: dict) -> str | None:
    """None when the compose API answers; else why not."""
    status, _ = call(base, "POST", "/api/compose", headers, {})
    if status in (404, 405):
        return f"send API not available (POST /api/compose answered {status})"
    return None


def smtp_source(lab: Lab, sender: str, rcpt: str, count: int) -> float:
    began = time.perf_counter()
    done = subprocess.run(
        [
            "/usr/sbin/smtp-source", "-s", str(CONCURRENCY), "-m", str(count),
            "-l", str(BODY_BYTES), "-f", sender, "-t", rcpt,
            f"{lab.info.host}:{lab.info.smtp_port}",
        ],
        capture_output=True, text=True, check=False, timeout=3600,
    )  # fmt: skip
    elapsed = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"smtp-source failed: {(done.stderr or done.stdout)[-400:]}")
    return count / elapsed


def _bare_session(
    host: str, port: int, ca_file: str, login: tuple[str, str], rcpt: str, count: int, body: bytes
) -> None:
    """One kept submission session (STARTTLS + AUTH) sending `count` messages."""
    import smtplib
    import ssl
    from email.utils import make_msgid

    context = ssl.create_default_context(cafile=ca_file)
    with smtplib.SMTP(host, port, timeout=60) as client:
        client.starttls(context=context)
        client.login(*login)
        for _ in range(count):
            headers = (
                f"From: {login[0]}\r\nTo: {rcpt}\r\nSubject: bare\r\n"
                f"Message-ID: {make_msgid()}\r\n\r\n"
            )
            client.sendmail(login[0], [rcpt], headers.encode() + body)


def bare_sender(lab: Lab, sender: str, password: str, rcpt: str, count: int) -> float:
    """The send ceiling of Python here: CONCURRENCY processes, each one kept session over
    submission (STARTTLS + AUTH, as the project's accounts send) writing messages of the
    same size with smtplib; no API, no database, no queue. msgs/s."""
    from concurrent.futures import ProcessPoolExecutor

    body = (b"x" * 76 + b"\r\n") * (BODY_BYTES // 78)
    info = lab.info
    shares = [count // CONCURRENCY + (i < count % CONCURRENCY) for i in range(CONCURRENCY)]
    with ProcessPoolExecutor(CONCURRENCY) as pool:
        pool.submit(int).result()  # the processes exist before the clock starts
        began = time.perf_counter()
        futures = [
            pool.submit(
                _bare_session,
                info.host,
                info.submission_port,
                info.ca_file,
                (sender, password),
                rcpt,
                share,
                body,
            )
            for share in shares
        ]
        for future in futures:
            future.result()
    return count / (time.perf_counter() - began)


def project_run(
    lab: Lab, bases: list[str], tenant, account_id: int, rcpt: str, count: int, rep: int
):
    """(msgs/s until all are sent, send-request latencies in ms)."""
    base = bases[0]
    text_body = Generator(5)._words(__import__("random").Random(rep), BODY_BYTES)
    drafts = []
    for i in range(count):
        draft_in = {
            "account_id": account_id,
            "to": [rcpt],
            "subject": f"b {rep}-{i}",
            "text": text_body,
        }
        status, draft = call(base, "POST", "/api/compose", tenant.headers, draft_in)
        if status != 201:
            raise RuntimeError(f"POST /api/compose answered {status}")
        drafts.append(draft["id"])
    latencies: list[float] = []
    outbox: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    todo = list(drafts)

    def client(base: str) -> None:
        while True:
            with lock:
                if not todo:
                    return
                draft_id = todo.pop()
            began = time.perf_counter()
            status, entry = call(base, "POST", f"/api/compose/{draft_id}/send", tenant.headers)
            elapsed = (time.perf_counter() - began) * 1000
            with lock:
                if status != 202:
                    errors.append(str(status))
                else:
                    latencies.append(elapsed)
                    outbox.append(entry["outbox_id"])

    began = time.perf_counter()
    threads = [
        threading.Thread(target=client, args=(bases[i % len(bases)],)) for i in range(CONCURRENCY)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"send answered {errors[:5]}")
    deadline = time.monotonic() + 60 + count / 2
    while True:
        with lab.engine.connect() as conn:
            states = dict(
                conn.execute(
                    text("SELECT state, count(*) FROM outbox WHERE id = ANY(:ids) GROUP BY 1"),
                    {"ids": outbox},
                ).all()
            )
        if states.get("sent", 0) == count:
            break
        if states.get("failed") or states.get("uncertain"):
            raise RuntimeError(f"outbox states {states}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"not all sent in time: {states}")
        time.sleep(0.05)
    return count / (time.perf_counter() - began), latencies


def run(lab: Lab, quick: bool) -> Result:
    size = SIZES[quick]
    n = size["messages"]
    users = lab.mailboxes("b5", 2)
    (sender, password), (rcpt, _) = users.items()
    tenant = lab.tenant("b5")
    account_id = lab.account(tenant.id, sender, password)
    rows: list[Row] = []
    peer: list[float] = []
    bare: list[float] = []
    project, accept = [], []
    with ExitStack() as stack:
        bases = [stack.enter_context(lab.api("waitress")) for _ in range(API_PROCESSES)]
        base = bases[0]
        reason = available(base, tenant.headers)
        if reason is None:
            procs = []
            # One tenant may occupy every worker but one (the fairness cap): one more worker
            # than CONCURRENCY gives the tenant CONCURRENCY sessions, as smtp-source has.
            for i in range(CONCURRENCY + 1):
                args = [str(BIN / "emailservice"), "worker", "send"]
                procs.append(stack.enter_context(lab.process(args, f"b5-worker{i}")))
            time.sleep(2)  # workers registered and listening
        for rep in range(size["reps"]):
            order = ["project", "peer", "bare"] if rep % 2 == 0 else ["bare", "peer", "project"]
            for side in order:
                if side == "peer":
                    peer.append(smtp_source(lab, sender, rcpt, n))
                elif side == "bare":
                    bare.append(bare_sender(lab, sender, password, rcpt, n))
                elif reason is None:
                    rate, latencies = project_run(lab, bases, tenant, account_id, rcpt, n, rep)
                    project.append(rate)
                    accept.append(percentile(latencies, 95))
        if lab.profiling and reason is None:
            from bench.profiling import py_spy
            from bench.profiling import summarize as summarize_profile

            seconds = int(n / max(min(project), 1)) + 5
            spies = {"B5-send-api": py_spy("B5-send-api", lab.pids[base], seconds)}
            spies["B5-send-worker"] = py_spy("B5-send-worker", procs[0].pid, seconds)
            project_run(lab, bases, tenant, account_id, rcpt, n, 99)
            for name, spy in spies.items():
                spy.wait()
                summarize_profile(name)
    if reason is not None:
        rows.append(failed("B5", "send throughput", reason))
        rows.append(
            Row("B5", "smtp-source alone (for scale)", "msgs/s", summarize(peer), note=reason)
        )
    else:
        rows.append(
            Row(
                "B5", "send throughput", "msgs/s", summarize(project), "smtp-source",
                summarize(peer), goal=(">=", 0.5),
            )
        )  # fmt: skip
        rows.append(
            Row(
                "B5", "send accept p95 (API)", "ms", summarize(accept),
                goal=("<=", 50), goal_on="value",
            )
        )  # fmt: skip
    rows.append(
        Row(
            "B5", "ceiling: Python smtplib, TLS + AUTH, kept sessions", "msgs/s",
            summarize(bare), "smtp-source", summarize(peer),
            note="no API, database or queue: what a Python sender gets through submission here",
        )
    )  # fmt: skip
    notes = [
        f"concurrency {CONCURRENCY}: {CONCURRENCY} API client threads over {API_PROCESSES} API "
        f"processes (the deploy's default) and {CONCURRENCY + 1} send workers, of which the "
        f"tenant may occupy {CONCURRENCY} (the fairness cap); smtp-source -s "
        f"{CONCURRENCY} -l {BODY_BYTES}.",
        "smtp-source cannot STARTTLS or AUTH: it sends to the same Postfix's port 25, the "
        "project to submission (TLS + SASL), as its accounts are configured.",
    ]
    corpus = {"messages": n, "body_bytes": BODY_BYTES, "concurrency": CONCURRENCY}
    return Result("B5", rows, corpus=corpus, notes=notes)
