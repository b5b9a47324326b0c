"""Domain errors: what a service or selector refuses, and why. They carry no HTTP: the
API's exception handler (tenants/api.py) renders each kind with its status as
{"error": {"code", "message", "fields"}}; commands and jobs read `code`. `retry_after`
(seconds) becomes a Retry-After header."""


class DomainError(Exception):
    def __init__(self, code: str, message: str, fields: dict | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.fields = fields or {}
        self.retry_after = retry_after

    def __reduce__(self):
        # Picklable with its class, whatever a subclass's __init__ takes (bulk ingest's
        # worker processes raise them back to the parent).
        return (_restore, (type(self), self.code, self.message, self.fields, self.retry_after))


def _restore(cls, code, message, fields, retry_after) -> "DomainError":
    error = DomainError.__new__(cls)
    DomainError.__init__(error, code, message, fields, retry_after)
    return error


class Invalid(DomainError):
    """The input is wrong; `fields` names what."""


class TooLarge(DomainError):
    """The input is larger than a limit allows."""


class NotFound(DomainError):
    """Not there, or not the caller's: the same answer for both."""


class Conflict(DomainError):
    """At odds with what is stored (a slug taken, an agent being deleted)."""


class Forbidden(DomainError):
    """Refused to this caller: a key's scope, an organization's quota."""


class RateLimited(DomainError):
    """Too many requests for now; `retry_after` says when to come back."""


class Unavailable(DomainError):
    """A dependency cannot answer now (the embedding provider); nothing was written."""


class UpstreamFailed(DomainError):
    """A dependency answered something unusable; nothing was written."""


# The name services used before the kinds existed.
ApiError = DomainError


def not_found(what: str = "Not found.") -> NotFound:
    return NotFound("not_found", what)


def conflict(code: str, message: str) -> Conflict:
    return Conflict(code, message)


def invalid(field: str, message: str) -> Invalid:
    return Invalid("invalid", f"{field}: {message}", {field: [message]})


def too_large(field: str, message: str) -> TooLarge:
    return TooLarge("too_large", f"{field}: {message}", {field: [message]})


def unavailable(code: str, message: str, retry_after: float) -> Unavailable:
    return Unavailable(code, message, retry_after=retry_after)


def quota_exceeded(name: str, limit: int, usage: int, adding: int) -> Forbidden:
    """The organization holds, or would hold, more of `name` than its quota."""
    message = f"Quota '{name}' exceeded: the limit is {limit}, {usage} in use, this request adds {adding}."
    return Forbidden("quota_exceeded", message, {name: [message]})
