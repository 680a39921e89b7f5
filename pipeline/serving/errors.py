"""Errors the endpoint answers with, one class per Databricks error code.

Each class fixes its HTTP status and `error_code`; the app turns any `ApiError` into the
Databricks body `{"error_code": ..., "message": ...}` in one place. Messages name fields and
indexes, never prompt text or credentials.
"""

from __future__ import annotations

from typing import ClassVar


class ApiError(Exception):
    """An error answered to the client as a Databricks-shaped JSON body."""

    status: ClassVar[int] = 500
    error_code: ClassVar[str] = "INTERNAL_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(ApiError):
    """The request body is not what the route accepts."""

    status = 400
    error_code = "INVALID_PARAMETER_VALUE"


class Unauthenticated(ApiError):
    """No usable credentials were sent."""

    status = 401
    error_code = "UNAUTHENTICATED"


class PermissionDenied(ApiError):
    """Credentials were sent but are not the endpoint's token."""

    status = 403
    error_code = "PERMISSION_DENIED"


class EndpointNotFound(ApiError):
    """The named serving endpoint is not served here."""

    status = 404
    error_code = "RESOURCE_DOES_NOT_EXIST"
