"""Request ids, JSON access logs and Prometheus metrics."""

from __future__ import annotations

import io
import json
import logging
import re
import threading

import pytest

from app.jobs import Jobs, QueueName
from app.logs import configure_logging, request_id_var, stop_logging
from tests.support import api_process, http_get


@pytest.fixture
def log_stream():
    stream = io.StringIO()
    configure_logging("INFO", stream=stream)
    yield stream
    configure_logging("INFO")


def log_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_request_id_is_echoed_and_logged(client, log_stream):
    response = client.get("/health", headers={"X-Request-ID": "req-abc.123"})
    assert response.headers["X-Request-ID"] == "req-abc.123"
    access = [line for line in log_lines(log_stream) if line["logger"] == "app.access"]
    assert access[-1]["request_id"] == "req-abc.123"
    assert access[-1]["status"] == 200
    assert access[-1]["route"] == "/health"
    assert access[-1]["level"] == "INFO"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", access[-1]["ts"])


def test_request_id_is_generated_when_missing_or_unsafe(client, log_stream):
    generated = client.get("/health").headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    unsafe = client.get("/health", headers={"X-Request-ID": "bad id\twith spaces"})
    assert unsafe.headers["X-Request-ID"] != "bad id\twith spaces"
    assert re.fullmatch(r"[0-9a-f]{32}", unsafe.headers["X-Request-ID"])
    ids = {line.get("request_id") for line in log_lines(log_stream)}
    assert generated in ids


def test_every_log_line_is_one_json_object(client, log_stream):
    client.get("/health")
    client.get("/no/such/route")
    lines = log_stream.getvalue().splitlines()
    assert lines
    for line in lines:
        assert isinstance(json.loads(line), dict)


def test_background_logging_keeps_each_threads_request_id_and_loses_nothing(client):
    """The API's records are written by a thread of their own: each line still carries the id
    of the request that logged it, a traceback is still one field, and stopping writes all."""
    stream = io.StringIO()
    configure_logging("INFO", stream=stream, background=True)
    try:

        def requests(n: int) -> None:
            for i in range(50):
                client.get("/health", headers={"X-Request-ID": f"t{n}-{i}"})

        threads = [threading.Thread(target=requests, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        token = request_id_var.set("failing-request")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("app.test").exception("failed with %s", "an argument")
        finally:
            request_id_var.reset(token)
    finally:
        stop_logging()
        configure_logging("INFO")
    lines = log_lines(stream)
    access = {line["request_id"]: line for line in lines if line["logger"] == "app.access"}
    assert set(access) == {f"t{n}-{i}" for n in range(4) for i in range(50)}
    assert all(line["route"] == "/health" and line["status"] == 200 for line in access.values())
    [failed] = [line for line in lines if line["logger"] == "app.test"]
    assert failed["request_id"] == "failing-request"
    assert failed["message"] == "failed with an argument"
    assert "ValueError: boom" in failed["exception"]


def test_serve_writes_its_last_log_lines_before_exiting(env, migrated, tmp_path):
    with api_process(env, tmp_path) as (port, log):
        assert http_get(port, "/health", {"X-Request-ID": "last-request"})[0] == 200
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert any(line.get("request_id") == "last-request" for line in lines)
    assert lines[-1]["message"] == "stopped"


def test_metrics_count_requests_by_route_and_status(client):
    client.get("/health")
    client.get("/health")
    client.get("/no/such/route/12345")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'emailservice_http_requests_total{method="GET",route="/health",status="200"} 2.0' in text
    assert 'route="<unmatched>",status="404"' in text
    assert "/no/such/route/12345" not in text  # raw paths never become labels
    assert re.search(
        r'emailservice_http_request_duration_seconds_count\{method="GET",route="/health",'
        r'status="200"\} 2\.0',
        text,
    )


def test_metrics_report_queue_depths(client, redis_client):
    queue = Jobs(redis_client).queue(QueueName.DEFAULT)
    queue.empty()
    queue.enqueue("workers.jobs.heartbeat")
    queue.enqueue("workers.jobs.heartbeat")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'emailservice_queue_jobs{queue="default"} 2.0' in text
    queue.empty()
