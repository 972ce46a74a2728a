"""The service's one error hierarchy; each error knows its API code and HTTP status.

Services raise these without knowing about HTTP; `app.api.errors` turns any of them into the
API's one error shape (docs/api.md, "Errors").
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error the API reports to a client."""

    code = "internal_error"
    status = 500

    def __init__(self, message: str, details: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class BadRequest(ServiceError):
    code, status = "bad_request", 400


class Unauthorized(ServiceError):
    code, status = "unauthorized", 401


class Forbidden(ServiceError):
    code, status = "forbidden", 403


class QuotaExceeded(ServiceError):
    """One of the tenant's limits (accounts, storage) would be passed: nothing was changed.

    A 403 like Forbidden, with its own code, so a client can tell "not allowed" from "full"
    (it is left out of BY_STATUS, which maps a bare HTTP status to the generic error)."""

    code, status = "quota_exceeded", 403


class NotFound(ServiceError):
    code, status = "not_found", 404


class MethodNotAllowed(ServiceError):
    code, status = "method_not_allowed", 405


class Conflict(ServiceError):
    code, status = "conflict", 409


class PayloadTooLarge(ServiceError):
    code, status = "payload_too_large", 413


class UnsupportedMediaType(ServiceError):
    code, status = "unsupported_media_type", 415


class ValidationFailed(ServiceError):
    code, status = "validation_error", 422


class RateLimited(ServiceError):
    code, status = "rate_limited", 429

    def __init__(
        self,
        message: str,
        details: list[dict[str, str]] | None = None,
        *,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message, details)
        self.retry_after = retry_after  # seconds, sent as Retry-After


class Unavailable(ServiceError):
    code, status = "unavailable", 503


BY_STATUS: dict[int, type[ServiceError]] = {
    cls.status: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        Conflict,
        PayloadTooLarge,
        UnsupportedMediaType,
        ValidationFailed,
        RateLimited,
        Unavailable,
    )
}
