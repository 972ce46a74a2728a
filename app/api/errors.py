"""Every failure leaves the API in one JSON shape: {"error": {"code", "message"[, "details"]}}."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from app.context import DEPENDENCY_ERRORS
from app.errors import BY_STATUS, ServiceError, Unavailable

log = logging.getLogger(__name__)


def error_response(error: ServiceError, headers: dict[str, str] | None = None) -> Response:
    """Render a ServiceError in the contract's shape."""
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.details is not None:
        body["details"] = error.details
    response = jsonify({"error": body})
    response.status_code = error.status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def init_app(app: Flask) -> None:
    """Install the handlers that map every exception to the error shape."""

    @app.errorhandler(ServiceError)
    def service_error(error: ServiceError) -> Response:
        retry_after = getattr(error, "retry_after", None)
        return error_response(error, {"Retry-After": str(retry_after)} if retry_after else None)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        cls = BY_STATUS.get(status)
        if cls is None:
            log.error("unmapped HTTP error %s", status)
            return error_response(ServiceError("Internal error."))
        response = error_response(cls(_message(error)))
        if status == 405 and error.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(error.valid_methods)  # type: ignore[attr-defined]
        return response

    def dependency_error(error: Exception) -> Response:
        log.warning("dependency unavailable: %s", type(error).__name__)
        return error_response(
            Unavailable("A service dependency is unavailable; try again shortly.")
        )

    for exc_class in DEPENDENCY_ERRORS:
        app.register_error_handler(exc_class, dependency_error)

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(ServiceError("Internal error."))


def _message(error: HTTPException) -> str:
    messages = {
        400: "The request could not be understood.",
        404: "No such resource.",
        405: "Method not allowed on this resource.",
        413: "The request body is too large.",
        415: "The request body must be JSON (Content-Type: application/json).",
    }
    return messages.get(error.code or 0, error.description or error.name)
