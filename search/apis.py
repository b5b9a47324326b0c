import json
import re
from collections import OrderedDict

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response

from core.fields import NOT_BLANK, StrictBooleanField, StrictCharField, StrictFloatField, StrictIntegerField, StrictSlugField
from search import filters, selectors
from search.selection import AgentSelection
from search.services import MODES, SearchRequest, search, search_prefetch
from tenants.api import HotInputSerializer, OrgAPIView
from tenants.auth import claimed_key_prefix
from tenants.errors import invalid, too_large


class ContextSerializer(HotInputSerializer):
    before = StrictIntegerField(min_value=0, max_value=5, default=0)
    after = StrictIntegerField(min_value=0, max_value=5, default=0)


class WeightsSerializer(HotInputSerializer):
    vector = StrictFloatField(min_value=0.0, max_value=10.0, default=1.0)
    keyword = StrictFloatField(min_value=0.0, max_value=10.0, default=1.0)


_SCALAR = {"anyOf": [
    {"type": "string", "maxLength": settings.SEARCH_MAX_FILTER_VALUE_CHARS, "pattern": "^[^\\x00]*$"}, {"type": "number"},
    {"type": "boolean"},
    {"type": "null"},
]}  # fmt: skip
_BOUND = {"anyOf": [
    {"type": "number"}, {"type": "string", "format": "date"}, {"type": "string", "format": "date-time", "maxLength": 40},
]}  # fmt: skip
_FILTERS_SCHEMA = {
    "type": "object",
    "maxProperties": settings.SEARCH_MAX_FILTER_FIELDS,
    "propertyNames": {"maxLength": 100, "pattern": "^[^\\x00]*$"},
    "properties": {
        "document_keys": {
            "type": "array", "minItems": 1, "maxItems": settings.SEARCH_MAX_FILTER_VALUES,
            "items": {"type": "string", "pattern": "^[^\\x00]*$"},
        },
    },
    "additionalProperties": {"anyOf": [_SCALAR, {
        "type": "object", "minProperties": 1, "additionalProperties": False,
        "properties": {
            "$eq": _SCALAR,
            "$in": {"type": "array", "minItems": 1, "maxItems": settings.SEARCH_MAX_FILTER_VALUES, "items": _SCALAR},
            "$gte": _BOUND,
            "$lte": _BOUND,
        },
    }]},
    "description": "On chunk metadata: {field: value}, {field: {$eq|$in|$gte|$lte: ...}} ($gte/$lte: a number or an "
    "ISO date), {document_keys: [...]}.",
}  # fmt: skip


@extend_schema_field(_FILTERS_SCHEMA)
class FiltersField(serializers.DictField):
    """Checked by search.filters.filters_sql (400 naming the field and operator)."""


class SearchInputSerializer(HotInputSerializer):
    # Something other than white space (the pattern documents what "not blank" means).
    query = StrictCharField(max_length=settings.SEARCH_MAX_QUERY_CHARS, validators=[NOT_BLANK])
    limit = StrictIntegerField(min_value=1, max_value=100, default=10)
    mode = serializers.ChoiceField(choices=MODES, default="hybrid")
    filters = FiltersField(required=False, default=dict)
    min_score = StrictFloatField(
        required=False, allow_null=True, default=None, help_text="Results scoring below it are left out (see a result's score)."
    )
    include_parent = StrictBooleanField(default=False)
    chunk_context = ContextSerializer(required=False)
    weights = WeightsSerializer(
        required=False,
        help_text="Hybrid only: how much the vector and keyword lists count, in place of the agent's vector_weight and "
        "keyword_weight (1 and 1 in a search of several agents). The vector weight is multiplied by the deployment's "
        "SEARCH_HYBRID_VECTOR_WEIGHT: 1 for a semantic embedder, less for a lexical one (the offline hashing embedder).",
    )


class ContextItemOutput(serializers.Serializer):
    chunk_key = serializers.CharField()
    position = serializers.ChoiceField(choices=["before", "after"])
    text = serializers.CharField()


class SearchResultOutput(serializers.Serializer):
    chunk_key = serializers.CharField()
    document_key = serializers.CharField()
    document_title = serializers.CharField()
    agent = serializers.CharField()
    text = serializers.CharField()
    parent_text = serializers.CharField(required=False, allow_null=True)
    context = ContextItemOutput(many=True, required=False)
    score = serializers.FloatField(
        help_text="Higher is better. vector: cosine similarity (1 - distance); keyword: bm25 / (bm25 + 1), in [0, 1); "
        "hybrid: the weighted mean of the chunk's vector and keyword scores, each min-max normalized over the search's "
        "candidates (1 for the best of a list, 0 for its last and for a chunk it did not find), in [0, 1]: relative to "
        "the query's other candidates, so not comparable across queries. Rounded to 6 decimal places."
    )
    metadata = serializers.JSONField()


class SearchOutput(serializers.Serializer):
    results = SearchResultOutput(many=True)
    mode = serializers.CharField()
    took_ms = serializers.FloatField()
    cached = serializers.BooleanField()
    degraded = serializers.ListField(
        child=serializers.ChoiceField(choices=["vector"]),
        help_text="What this answer had to do without: [\"vector\"] when a hybrid search ran by keywords only "
        "because the embedding provider was unavailable (not cached). Empty normally.",
    )


# The body most searches send: a query and perhaps a limit and a mode.
_PLAIN_KEYS = frozenset(("query", "limit", "mode"))


def _plain_request(data) -> SearchRequest | None:
    """A body of _PLAIN_KEYS only, each valid as SearchInputSerializer reads it (the query
    trimmed as its CharField trims it), without the serializer, whose field machinery
    costs more than the rest of a cached search's Python; None for anything else, which
    the serializer then validates (and words the errors of)."""
    if type(data) is not dict or not data.keys() <= _PLAIN_KEYS:
        return None
    query, limit, mode = data.get("query"), data.get("limit", 10), data.get("mode", "hybrid")
    if type(query) is not str or type(limit) is not int or not 1 <= limit <= 100 or type(mode) is not str or mode not in MODES:
        return None
    query = query.strip()
    if len(query) > settings.SEARCH_MAX_QUERY_CHARS or not NOT_BLANK.regex.search(query) or _SURROGATE.search(query):
        return None
    return SearchRequest(query=query, limit=limit, mode=mode)


_SURROGATE = re.compile("[\ud800-\udfff]")  # DRF's CharField refuses them


def _request(data, serializer_class=SearchInputSerializer) -> tuple[SearchRequest, list[str] | None]:
    """The validated search request, and the `agents` the body names (None if it names none)."""
    plain = _plain_request(data)
    if plain is not None and filters.query_operators(plain.query) <= settings.SEARCH_MAX_PHRASES:
        return plain, None
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    values = dict(serializer.validated_data)
    if not values["query"].strip():
        raise invalid("query", "Must not be blank.")
    if filters.query_operators(values["query"]) > settings.SEARCH_MAX_PHRASES:
        raise invalid("query", f"At most {settings.SEARCH_MAX_PHRASES} quoted phrases and -words.")
    values["chunk_context"] = dict(values.get("chunk_context") or {})
    values["weights"] = dict(values.get("weights") or {})
    agents = values.pop("agents", None)
    return SearchRequest(**values), agents


def search_request_parse(data) -> SearchRequest:
    """A search request from a body as the agent search endpoint takes it, checked as it
    checks it (the console's playground)."""
    return _request(data)[0]


# Prefixes of API keys that authenticated in this process: only their bodies are read
# before authentication (bounded by SEARCH_MAX_BODY_BYTES), so a caller without a key
# that worked here never gets a body parsed before being refused.
_known_callers: OrderedDict = OrderedDict()
_KNOWN_CALLERS_SIZE = 10_000


def _body_length(request) -> int | None:
    try:
        return int(request.META.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None


def _early_request(request, serializer_class, caller: str | None) -> tuple[SearchRequest, list[str] | None] | None:
    """_request's answer from the raw JSON body, before authentication, for a caller whose
    key authenticated here before and a small body; None where that would fail: its error
    is raised after authentication, as any other input error."""
    if caller not in _known_callers or request.content_type.split(";")[0].strip() != "application/json":
        return None
    length = _body_length(request)
    if length is None or length > settings.SEARCH_MAX_BODY_BYTES:
        return None
    try:
        return _request(json.loads(request.body), serializer_class)
    except Exception:  # noqa: BLE001 - invalid, unreadable or too large: left to post()
        return None


class SearchApi(OrgAPIView):
    """A search endpoint. Its shared-cache read (the result, the query's embedding) is
    sent before the API key's statement and read after it: the two round trips overlap
    (services.search_prefetch; caching.SharedRead)."""

    InputSerializer = SearchInputSerializer
    key_scopes = {"POST": "read"}
    rate_scopes = {"POST": "search"}
    # Reads only: the key's statement and the search's each declare the organization
    # themselves, two round trips as without row-level security (docs/benchmarks.md).
    request_transaction = False

    def scope(self, slugs: list[str] | None, **url_kwargs) -> tuple:
        raise NotImplementedError

    def initial(self, request, *args, **kwargs):
        self.refuse_if_told_to_wait(request)
        caller = claimed_key_prefix(request)
        self.early, pending = _early_request(request, self.InputSerializer, caller), None
        if self.early is not None:
            pending = search_prefetch(caller=caller, scope=self.scope(self.early[1], **kwargs), request=self.early[0])
        try:
            super().initial(request, *args, **kwargs)  # authentication: the API key's statement
        finally:
            self.read = pending.receive() if pending else None
        self.admitted(request)

    def admitted(self, request) -> None:
        """Authenticated, within its scope and rate: now the body may be read, if small,
        and the caller's next bodies early."""
        if (_body_length(request) or 0) > settings.SEARCH_MAX_BODY_BYTES:
            raise too_large("body", f"A search body may hold at most {settings.SEARCH_MAX_BODY_BYTES} bytes.")
        prefix = request.user.api_key.prefix
        if prefix not in _known_callers:
            _known_callers[prefix] = True
            if len(_known_callers) > _KNOWN_CALLERS_SIZE:
                _known_callers.popitem(last=False)

    def search(self, selection: AgentSelection, search_request: SearchRequest, slugs: list[str] | None = None, **url_kwargs):
        return Response(search(
            org=self.org, selection=selection, request=search_request, scope=self.scope(slugs, **url_kwargs),
            caller=self.request.user.api_key.prefix, read=self.read,
        ))  # fmt: skip


class AgentSearchApi(SearchApi):
    def key_join(self, slug):
        return selectors.search_agent_key_join(slug=slug)

    def scope(self, slugs, slug):
        return ("agent", slug)

    @extend_schema(request=SearchInputSerializer, responses=SearchOutput)
    def post(self, request, slug):
        search_request, _ = self.early or _request(request.data)
        agent = selectors.search_agent_from_row(self.joined)
        return self.search(AgentSelection([agent]), search_request, slug=slug)


class OrganizationSearchApi(SearchApi):
    class InputSerializer(SearchInputSerializer):
        class Meta:
            ref_name = "OrganizationSearchInput"  # a component name of its own in the schema

        agents = serializers.ListField(child=StrictSlugField(), required=False, max_length=1000)

    def scope(self, slugs):
        return ("agents", *sorted(set(slugs or ())))

    @extend_schema(request=InputSerializer, responses=SearchOutput)
    def post(self, request):
        search_request, slugs = self.early or _request(request.data, self.InputSerializer)
        selection = selectors.search_agents_get(org=self.org, slugs=slugs)
        return self.search(selection, search_request, slugs)


class HotChunksApi(OrgAPIView):
    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "HotChunksOutput"  # a component name of its own in the schema

        chunk_key = serializers.CharField()
        document_key = serializers.CharField()
        text = serializers.CharField()
        access_count = serializers.IntegerField()
        avg_score = serializers.FloatField()
        last_accessed_at = serializers.DateTimeField()

    rate_scopes = {"GET": "search"}
    query_parameters = {"GET": ("limit", "window")}

    def key_join(self, slug):
        return selectors.search_agent_key_join(slug=slug)

    @extend_schema(
        responses=inline_serializer("HotChunksPage", {"window": serializers.CharField(), "results": OutputSerializer(many=True)}),
        parameters=[
            OpenApiParameter("limit", {"type": "integer", "minimum": 1, "maximum": 100}, description="default 20"),
            OpenApiParameter(
                "window", {"type": "string", "enum": [f"{n}d" for n in range(1, settings.SEARCH_ACCESS_RETENTION_DAYS + 1)]},
                description="days back from now (default 7d)",
            ),
        ],
    )
    def get(self, request, slug):
        limit = _int_param(request, "limit", 20, 1, 100)
        window = request.query_params.get("window", "7d")
        if not (window.endswith("d") and window[:-1].isdigit() and 1 <= int(window[:-1]) <= settings.SEARCH_ACCESS_RETENTION_DAYS):
            raise invalid("window", f"Use Nd with N from 1 to {settings.SEARCH_ACCESS_RETENTION_DAYS}, e.g. 7d.")
        agent = selectors.search_agent_from_row(self.joined)
        rows = selectors.hot_chunks(org=self.org, agent_id=agent.id, days=int(window[:-1]), limit=limit)
        return Response({"window": window, "results": self.OutputSerializer(rows, many=True).data})


def _int_param(request, name, default, low, high) -> int:
    raw = request.query_params.get(name, default)
    try:
        value = int(raw)
    except (TypeError, ValueError):
        value = None
    if value is None or not low <= value <= high:
        raise invalid(name, f"Must be an integer from {low} to {high}.")
    return value
