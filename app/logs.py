"""JSON-lines logging with a request (or job) id on every line.

One line per record on stderr, so the journal and any log shipper can parse it. The id lives
in a context variable: the API sets it per request, workers per job.

The API (`configure_logging(..., background=True)`) writes from a thread of its own: request
threads only put the record on a queue (a `QueueHandler`) and never wait for each other on
the stream's lock or for stderr to drain. The queue is bounded (a stalled stderr makes the
request threads wait, as writing would, rather than grow the process), and `stop_logging()`,
also run at exit, writes every record queued before it returns.
"""

from __future__ import annotations

import atexit
import copy
import json
import logging
import queue
import sys
from contextvars import ContextVar
from datetime import datetime, timezone
from logging.handlers import QueueHandler, QueueListener
from typing import TextIO

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else was passed with `extra=` and is logged too.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
# Records waiting for the writer thread (each a few hundred bytes).
QUEUE_RECORDS = 10_000
_listener: QueueListener | None = None


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        # Queued records carry the id of the thread that logged them (_Enqueue).
        request_id = vars(record).get("_request_id", request_id_var.get())
        if request_id:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, default=str, ensure_ascii=False)


class _Enqueue(QueueHandler):
    """Puts records on the writer's queue with what is only known on the logging thread: the
    request id, the message with its arguments, the traceback as text."""

    queue: queue.Queue[logging.LogRecord]

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record = copy.copy(record)
        record.msg = record.getMessage()
        record.args = None
        record._request_id = request_id_var.get()
        if record.exc_info:
            record.exc_text = JsonFormatter().formatException(record.exc_info)
            record.exc_info = None
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        self.queue.put(record)  # blocks while full, as a slow stream would


def stop_logging() -> None:
    """Write every queued record and stop the writer thread (no-op without one)."""
    global _listener
    listener, _listener = _listener, None
    if listener is not None:
        listener.stop()


def configure_logging(
    level: str = "INFO", stream: TextIO | None = None, *, background: bool = False
) -> None:
    """Send every logger's records to stderr as JSON lines, replacing earlier handlers;
    `background`: written by a thread of their own (the API; never in a process that forks
    workers, whose children would not have the thread)."""
    global _listener
    stop_logging()
    handler: logging.Handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    if background:
        records: queue.Queue[logging.LogRecord] = queue.Queue(QUEUE_RECORDS)
        _listener = QueueListener(records, handler)
        _listener.start()
        handler = _Enqueue(records)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # RQ and Alembic install handlers of their own; route them through ours instead.
    for name in ("waitress", "rq", "rq_scheduler", "alembic"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # imapclient's DEBUG output is the IMAP conversation, LOGIN and its password included:
    # never let LOG_LEVEL=DEBUG turn it on.
    logging.getLogger("imapclient").setLevel(max(logging.getLevelName(level), logging.INFO))


# Registered after logging's own exit hook, so it runs first: queued records are written
# before the streams are flushed and closed.
atexit.register(stop_logging)
