"""What every API view shares: the organization from the key, and one error format.

Errors are always {"error": {"code", "message", "fields"}}; `fields` maps the
offending input field (dotted for nested ones, e.g. "config.chunk_size") to messages.
"""

import copy
import math
from contextlib import ExitStack

from django.db import OperationalError, connection, transaction
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, inline_serializer
from psycopg.errors import QueryCanceled
from rest_framework import exceptions, serializers, status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.permissions import SAFE_METHODS, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from core import db, errors, limits, metrics, throttling
from core.errors import ApiError, invalid, not_found  # noqa: F401 - re-exported for views
from core.permissions import KeyScopePermission
from core.throttling import OrganizationRateThrottle
from tenants import audit
from tenants.auth import claimed_key_prefix


def _flatten(detail, prefix="") -> dict:
    out = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            if key == "non_field_errors" and prefix:
                out.update(_flatten(value, prefix))  # about the nested object as a whole
            elif isinstance(key, int):  # a list serializer's errors, by item
                out.update(_flatten(value, f"{prefix}[{key}]"))
            else:
                out.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
    elif isinstance(detail, list):
        if detail and all(not isinstance(item, (dict, list)) for item in detail):
            out[prefix or "non_field_errors"] = [str(item) for item in detail]
        else:
            for index, item in enumerate(detail):
                out.update(_flatten(item, f"{prefix}[{index}]"))
    else:
        out[prefix or "non_field_errors"] = [str(detail)]
    return out


# How the API renders each kind of domain error (the only place they meet HTTP).
STATUS = {
    errors.Invalid: 400, errors.Forbidden: 403, errors.NotFound: 404, errors.Conflict: 409, errors.TooLarge: 413,
    errors.RateLimited: 429, errors.UpstreamFailed: 502, errors.Unavailable: 503,
}


def _status(exc: errors.DomainError) -> int:
    return next((STATUS[kind] for kind in type(exc).__mro__ if kind in STATUS), 400)


def _statement_timeout(exc) -> bool:
    """A statement PostgreSQL cancelled at DATABASE_STATEMENT_TIMEOUT (Django wraps psycopg's error)."""
    return isinstance(exc, OperationalError) and isinstance(exc.__cause__, QueryCanceled)


def exception_handler(exc, context):
    if _statement_timeout(exc):
        # The request's transaction (or savepoint) is aborted: it ends in a rollback, and
        # whatever the request wrote goes with it.
        if connection.in_atomic_block:
            transaction.set_rollback(True)
        exc = errors.unavailable(
            "database_timeout", "The database did not answer in time; nothing was written. Try again.", retry_after=1,
        )  # fmt: skip
    if isinstance(exc, errors.DomainError):
        response = Response({"error": {"code": exc.code, "message": exc.message, "fields": exc.fields}}, status=_status(exc))
        if exc.retry_after is not None:
            response["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        return response
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoValidationError):
        # Services raise Django's ValidationError keyed by input field name.
        exc = exceptions.ValidationError(exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages})
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        first = next(iter(fields.items()), ("", [""]))
        body = {"code": "invalid", "message": f"{first[0]}: {first[1][0]}", "fields": fields}
    else:
        codes = exc.get_codes() if hasattr(exc, "get_codes") else "error"
        body = {"code": codes if isinstance(codes, str) else "error", "message": str(exc.detail), "fields": {}}
    response.data = {"error": body}
    return response


class HotInputSerializer(serializers.Serializer):
    """Input serializer of an endpoint called on every agent turn (search).

    DRF deep-copies every declared field for each serializer instance, which re-runs
    each field's __init__: a fifth of a cached search's fixed cost before any work
    (bench/search.py's "no-search" request; docs/benchmarks.md). Declared fields are configuration, set when
    the class is defined and never changed, so each instance gets shallow copies and
    binds them (name, parent) itself. A nested serializer copied this way builds its own
    fields on first use, so nested ones should be HotInputSerializers too."""

    def get_fields(self):
        return {name: copy.copy(field) for name, field in self._declared_fields.items()}


class Pagination(LimitOffsetPagination):
    """limit/offset pages; a value that is not a whole number in range is a 400 naming it
    (DRF's own falls back to the default silently)."""

    default_limit = 50
    max_limit = 500

    def get_limit(self, request):
        return self._param(request, self.limit_query_param, self.default_limit, 1, self.max_limit)

    def get_offset(self, request):
        return self._param(request, self.offset_query_param, 0, 0, None)

    @staticmethod
    def _param(request, name: str, default: int, low: int, high: int | None) -> int:
        values = request.query_params.getlist(name)
        if not values:
            return default
        raw = values[-1]
        if len(values) > 1 or not raw.isascii() or not raw.isdigit() or int(raw) < low or (high is not None and int(raw) > high):
            raise invalid(name, f"Must be one whole number from {low}" + (f" to {high}." if high else " on."))
        return int(raw)


PAGE_PARAMETERS = [
    OpenApiParameter(
        "limit", {"type": "integer", "minimum": 1, "maximum": Pagination.max_limit},
        description=f"page size (default {Pagination.default_limit})",
    ),
    OpenApiParameter("offset", {"type": "integer", "minimum": 0}, description="items to skip"),
]  # fmt: skip


def paginated(serializer_class, name: str):
    """The schema of OrgAPIView.paginate's answer: a page of `serializer_class` items."""
    return inline_serializer(name, {
        "count": serializers.IntegerField(),
        "next": serializers.URLField(allow_null=True),
        "previous": serializers.URLField(allow_null=True),
        "results": serializer_class(many=True),
    })  # fmt: skip


class OrgAPIView(APIView):
    """Base for every tenant API view: `self.org` is resolved once, from the API key.

    A view whose every request needs one more row of the organization (a search: its
    agent) defines `key_join(**url_kwargs) -> tenants.auth.KeyJoin`; the row is read in the
    API key's statement and is `self.joined` (None when there is none).

    Before the body is parsed, the key's scope is checked (`key_scopes`: the scope each
    method needs, else read for reads and write for the rest) and the organization's and
    the key's rate limits (`rate_scopes`: the limit each method counts against, same
    defaults)."""

    key_join = None
    # False for read-only views on the hot path (search): no request transaction, so no
    # BEGIN and COMMIT; each statement declares its organization itself (db.tenant(org,
    # atomic=False), ORM querysets open their own). Related managers and raw Django
    # cursors would then run with nothing declared, and see nothing.
    request_transaction = True
    # The query parameters each method takes; any other is a 400 naming it (a typo is not
    # silently ignored).
    query_parameters: dict[str, tuple[str, ...]] = {}
    key_scopes: dict[str, str] = {}
    rate_scopes: dict[str, str] = {}
    permission_classes = [IsAuthenticated, KeyScopePermission]
    throttle_classes = [OrganizationRateThrottle]

    def key_scope_for(self, method: str) -> str:
        return self.key_scopes.get(method) or ("read" if method in SAFE_METHODS else "write")

    def rate_scope_for(self, method: str) -> str:
        return self.rate_scopes.get(method) or ("read" if method in SAFE_METHODS else "write")

    def initial(self, request, *args, **kwargs):
        self.refuse_if_told_to_wait(request)
        super().initial(request, *args, **kwargs)
        if any(isinstance(value, str) and "\x00" in value for value in kwargs.values()):
            raise not_found()  # nothing stored can be named with NUL (PostgreSQL refuses it)
        allowed = self.query_parameters.get(request.method, ())
        unknown = sorted(name for name in request.query_params if name not in allowed)
        if unknown and request.method.lower() in self.http_method_names and hasattr(self, request.method.lower()):
            takes = f"this endpoint takes {', '.join(allowed)}" if allowed else "this endpoint takes none"
            raise invalid(unknown[0] or "query", f"Unknown query parameter; {takes}.")

    def refuse_if_told_to_wait(self, request) -> None:
        """Refusals this process can give from memory, before authentication
        (core.throttling): a caller refused by the rate limit and back before its wait is
        over gets the same 429; a request of an organization that holds all its in-flight
        places now gets that 429."""
        scope = self.rate_scope_for(request.method)
        waiting = throttling.told_to_wait(request.META.get("HTTP_AUTHORIZATION", ""), scope)
        if waiting is not None:
            throttling.metrics["limited"][scope] += 1
            metrics.rate_limited(scope)
            raise _rate_limited(scope, *waiting)
        limit = throttling.saturated(claimed_key_prefix(request))
        if limit is not None:
            throttling.metrics["limited"]["in_flight"] += 1
            metrics.rate_limited("in_flight")
            raise _too_many_in_flight(limit)

    def dispatch(self, request, *args, **kwargs):
        self.in_flight_org = None  # set once the request holds one of its organization's places
        with ExitStack() as self.transaction:
            try:
                return super().dispatch(request, *args, **kwargs)
            finally:
                if self.in_flight_org is not None:
                    throttling.leave(self.in_flight_org)

    def perform_authentication(self, request):
        # One transaction per request from here on: the API key's statement declares its
        # organization in it (core/db.py), so every statement after it, ORM or raw, runs
        # under that organization's row-level-security policy. A request refused before
        # authentication (or without a key) never reaches the database. A view with
        # `request_transaction = False` has none, unless it runs inside a caller's
        # transaction (a test's): then its declarations end with a savepoint of its own.
        if request.META.get("HTTP_AUTHORIZATION") and (self.request_transaction or connection.in_atomic_block):
            self.transaction.enter_context(db.transaction_declared_later())
        super().perform_authentication(request)

    def check_throttles(self, request):
        # The in-flight limit first: a request refused by it takes nothing from the rate.
        org = request.user.organization
        in_flight = limits.in_flight(org)
        throttling.remember_prefix(request.user.api_key.prefix, org.pk, in_flight)
        if not throttling.enter(org.pk, in_flight):
            raise _too_many_in_flight(in_flight)
        self.in_flight_org = org.pk
        throttle = OrganizationRateThrottle()
        if not throttle.allow_request(request, self):
            raise _rate_limited(throttle.scope, throttle.wait_seconds, throttle.limit, throttle.key_limit)

    @property
    def org(self):
        return self.request.user.organization

    @property
    def joined(self):
        return self.request.user.joined

    def audit(self, action: str, target_type: str, target_key="", summary: dict | None = None):
        """The audit event of this request's change, in the request's transaction
        (tenants/audit.py): call it once the change is made, so a failed one records none."""
        return audit.record(
            org=self.org, actor=audit.Actor.from_request(self.request), action=action, target_type=target_type,
            target_key=str(target_key), summary=summary,
        )  # fmt: skip

    def paginate(self, queryset, serializer_class):
        paginator = Pagination()
        page = paginator.paginate_queryset(queryset, self.request, view=self)
        return paginator.get_paginated_response(serializer_class(page, many=True).data)


def _rate_limited(scope: str, seconds: float, limit: int, key_limit: int) -> errors.RateLimited:
    return errors.RateLimited(
        "rate_limited",
        f"Rate limit of the '{scope}' scope reached: {limit} requests per minute for the organization,"
        f" {key_limit} per API key. Retry after {math.ceil(seconds)} s.",
        {"scope": [scope], "limit": [f"{limit}/min"]}, retry_after=seconds,
    )  # fmt: skip


def _too_many_in_flight(limit: int) -> errors.RateLimited:
    return errors.RateLimited(
        "too_many_requests_in_flight",
        f"The organization has {limit} requests in progress on this server process already:"
        " wait for an answer before sending more. Retry after 1 s.",
        {"limit": [f"{limit} in flight"]}, retry_after=1,
    )  # fmt: skip


def created(data) -> Response:
    return Response(data, status=status.HTTP_201_CREATED)
