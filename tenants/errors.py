"""Errors services raise and the API renders as {"error": {...}} with their status."""

from rest_framework import exceptions


class ApiError(exceptions.APIException):
    def __init__(self, status_code: int, code: str, message: str, fields: dict | None = None):
        self.status_code = status_code
        self.code = code
        self.fields = fields or {}
        super().__init__(detail=message, code=code)


def not_found(what: str = "Not found.") -> ApiError:
    # The same answer for "does not exist" and "belongs to another organization".
    return ApiError(404, "not_found", what)


def conflict(code: str, message: str) -> ApiError:
    return ApiError(409, code, message)


def invalid(field: str, message: str) -> ApiError:
    return ApiError(400, "invalid", f"{field}: {message}", {field: [message]})


def too_large(field: str, message: str) -> ApiError:
    return ApiError(413, "too_large", f"{field}: {message}", {field: [message]})
