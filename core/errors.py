"""Errors services raise and the API renders as {"error": {...}} with their status.

Every app raises these (never HTTP exceptions of its own); tenants.api's exception
handler renders them. `retry_after` (seconds) becomes a Retry-After header."""

from rest_framework import exceptions


class ApiError(exceptions.APIException):
    def __init__(self, status_code: int, code: str, message: str, fields: dict | None = None, retry_after: float | None = None):
        self.status_code = status_code
        self.code = code
        self.fields = fields or {}
        self.retry_after = retry_after
        super().__init__(detail=message, code=code)

    def __reduce__(self):
        # Picklable with its class, whatever a subclass's __init__ takes (bulk ingest's
        # worker processes raise them back to the parent).
        return (_restore, (type(self), self.status_code, self.code, str(self.detail), self.fields, self.retry_after))


def _restore(cls, status_code, code, message, fields, retry_after) -> ApiError:
    error = ApiError.__new__(cls)
    ApiError.__init__(error, status_code, code, message, fields, retry_after)
    return error


def not_found(what: str = "Not found.") -> ApiError:
    # The same answer for "does not exist" and "belongs to another organization".
    return ApiError(404, "not_found", what)


def conflict(code: str, message: str) -> ApiError:
    return ApiError(409, code, message)


def invalid(field: str, message: str) -> ApiError:
    return ApiError(400, "invalid", f"{field}: {message}", {field: [message]})


def too_large(field: str, message: str) -> ApiError:
    return ApiError(413, "too_large", f"{field}: {message}", {field: [message]})


def unavailable(code: str, message: str, retry_after: float) -> ApiError:
    """503: a dependency (the embedding provider) cannot answer now; nothing was written."""
    return ApiError(503, code, message, retry_after=retry_after)


def quota_exceeded(name: str, limit: int, usage: int, adding: int) -> ApiError:
    """403: the organization holds, or would hold, more of `name` than its quota."""
    message = f"Quota '{name}' exceeded: the limit is {limit}, {usage} in use, this request adds {adding}."
    return ApiError(403, "quota_exceeded", message, {name: [message]})
