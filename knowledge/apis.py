from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.response import Response

from core.fields import StrictCharField, StrictSlugField
from knowledge import selectors, services
from knowledge.models import FTS_LANGUAGES
from knowledge.deletion_apis import AgentDeleteMixin
from knowledge.services import CONFIG_LIMITS
from tenants.api import PAGE_PARAMETERS, OrgAPIView, created, not_found, paginated
from tenants.audit import changes


class AgentConfigSerializer(serializers.Serializer):
    chunk_size = serializers.IntegerField(min_value=CONFIG_LIMITS["chunk_size"][0], max_value=CONFIG_LIMITS["chunk_size"][1])
    chunk_overlap = serializers.IntegerField(min_value=CONFIG_LIMITS["chunk_overlap"][0], max_value=CONFIG_LIMITS["chunk_overlap"][1])
    parent_chunk_size = serializers.IntegerField(
        min_value=CONFIG_LIMITS["parent_chunk_size"][0], max_value=CONFIG_LIMITS["parent_chunk_size"][1]
    )
    embedding_model = serializers.CharField(max_length=100)
    language = serializers.CharField(max_length=20)
    vector_weight = serializers.FloatField(min_value=0.0, max_value=10.0)
    keyword_weight = serializers.FloatField(min_value=0.0, max_value=10.0)


class AgentStatsOutput(serializers.Serializer):
    total_chunks = serializers.IntegerField()
    document_count = serializers.IntegerField()
    total_size_bytes = serializers.IntegerField()
    status = serializers.CharField(source="agent.status")
    last_ingested_at = serializers.DateTimeField(allow_null=True)
    last_searched_at = serializers.DateTimeField(allow_null=True)
    search_count = serializers.IntegerField()
    avg_search_latency_ms = serializers.FloatField()
    cache_hit_rate = serializers.FloatField()


class AgentOutput(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()
    status = serializers.CharField()
    config = AgentConfigSerializer(source="*")
    stats = AgentStatsOutput()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


_CONFIG_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        **{
            key: {"type": "number" if isinstance(low, float) else "integer", "minimum": low, "maximum": high}
            for key, (low, high) in CONFIG_LIMITS.items()
        },
        "embedding_model": {"type": "string", "minLength": 1, "maxLength": 100},
        "language": {"type": "string", "enum": FTS_LANGUAGES},
    },
    "description": "Any of these keys. Also: chunk_overlap at most half of chunk_size; parent_chunk_size 0 "
    "(no parents) or at least chunk_size (400 naming the field otherwise).",
}


@extend_schema_field(_CONFIG_SCHEMA)
class AgentConfigField(serializers.DictField):
    """Config is validated by the service (unknown keys, ranges, cross-field rules) so the
    admin, commands and API share one set of rules; the schema documents the same."""


def _config_field():
    return AgentConfigField(required=False, default=dict)


class AgentListCreateApi(OrgAPIView):
    query_parameters = {"GET": ("limit", "offset")}
    key_scopes = {"POST": "admin"}
    rate_scopes = {"POST": "read"}
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "AgentListCreateInput"  # a component name of its own in the schema

        slug = StrictSlugField(max_length=64)
        name = StrictCharField(max_length=200, required=False, default="", allow_blank=True)
        config = _config_field()

    @extend_schema(operation_id="agents_list", responses=paginated(AgentOutput, "AgentPage"), parameters=PAGE_PARAMETERS)
    def get(self, request):
        return self.paginate(selectors.agent_list(org=self.org), AgentOutput)

    @extend_schema(request=InputSerializer, responses={201: AgentOutput})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        agent = services.agent_create(org=self.org, **data.validated_data)
        self.audit("agent.created", "agent", agent.slug, {"settings": services.agent_settings(agent)})
        return created(AgentOutput(selectors.agent_get(org=self.org, slug=agent.slug)).data)


class AgentDetailApi(AgentDeleteMixin, OrgAPIView):
    key_scopes = {"PATCH": "admin", "DELETE": "admin"}
    rate_scopes = {"PATCH": "read"}
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "AgentDetailInput"  # a component name of its own in the schema

        name = StrictCharField(max_length=200, required=False, allow_blank=True)
        config = _config_field()

    def get_agent(self, slug):
        agent = selectors.agent_get(org=self.org, slug=slug)
        if agent is None:
            raise not_found("Agent not found.")
        return agent

    @extend_schema(responses=AgentOutput)
    def get(self, request, slug):
        return Response(AgentOutput(self.get_agent(slug)).data)

    @extend_schema(request=InputSerializer, responses=AgentOutput)
    def patch(self, request, slug):
        agent = self.get_agent(slug)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        updated = services.agent_update(org=self.org, agent=agent, **data.validated_data)
        self.audit("agent.updated", "agent", slug, {"changes": changes(services.agent_settings(agent), services.agent_settings(updated))})
        return Response(AgentOutput(self.get_agent(slug)).data)


class AgentStatsApi(OrgAPIView):
    def key_join(self, slug):
        return selectors.agent_stats_key_join(slug=slug)

    @extend_schema(responses=AgentStatsOutput)
    def get(self, request, slug):
        stats = selectors.agent_stats_from_row(self.joined)
        if stats is None:
            raise not_found("Agent not found.")
        return Response(AgentStatsOutput(stats).data)


class OrganizationStatsApi(OrgAPIView):
    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "OrganizationStatsOutput"  # a component name of its own in the schema

        total_agents = serializers.IntegerField()
        active_agents = serializers.IntegerField()
        deleting_agents = serializers.IntegerField()
        total_chunks = serializers.IntegerField()
        total_documents = serializers.IntegerField()
        total_size_bytes = serializers.IntegerField()

    @extend_schema(responses=OutputSerializer)
    def get(self, request):
        return Response(self.OutputSerializer(selectors.organization_stats(org=self.org)).data)


class UsageApi(OrgAPIView):
    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "UsageOutput"  # a component name of its own in the schema

        in_flight = serializers.IntegerField(
            allow_null=True, help_text="requests the organization may have in progress at once per web process (null: no limit)"
        )
        quotas = serializers.DictField(
            child=serializers.DictField(), help_text="agents, documents, chunks, bytes, jobs: {limit (null: none), used}"
        )
        rate_limits = serializers.DictField(
            child=serializers.DictField(), help_text="search, write, read: {organization_per_minute, key_per_minute}"
        )

    @extend_schema(responses=OutputSerializer)
    def get(self, request):
        return Response(selectors.organization_usage(org=self.org))
