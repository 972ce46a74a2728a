"""Request ids, JSON access logs and Prometheus metrics."""

from __future__ import annotations

import io
import json
import re

import pytest

from app.jobs import Jobs, QueueName
from app.logs import configure_logging


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
