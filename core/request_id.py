"""X-Request-ID: every response carries one, and so do the log lines and audit events of
its request.

The client's id is kept when it is well formed (1 to 128 characters of letters, digits
and `._:-`, nothing a log line or a header could be split by); otherwise, or without one,
a new one (32 hex digits). The id lives in a context variable for the duration of the
request: the logging filter reads it (core/logging.py), and `current()` hands it to code
that has no request (an audit event recorded by a service)."""

import re
import uuid
from contextvars import ContextVar

HEADER = "X-Request-ID"
META_KEY = "HTTP_X_REQUEST_ID"
_WELL_FORMED = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_current: ContextVar[str] = ContextVar("lore_request_id", default="")


def current() -> str:
    """The id of the request being served in this thread or task; '' outside one."""
    return _current.get()


def accept(value: str | None) -> str:
    """The client's id if well formed, else a new one."""
    if value and _WELL_FORMED.fullmatch(value):
        return value
    return uuid.uuid4().hex


class RequestId:
    """First middleware: the id is set before anything can log, and on every response
    (errors, 404s, the admin and health checks included)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.request_id = accept(request.META.get(META_KEY))
        token = _current.set(request.request_id)
        try:
            response = self.get_response(request)
        finally:
            _current.reset(token)
        response[HEADER] = request.request_id
        return response
