"""The API, plus the same statistics answered the slow way (COUNT/SUM over the rows on
every request), so bench/ingest_stats.py compares both through the same HTTP stack.
Bench only: never routed in config/urls.py."""

from django.db import connection
from django.urls import path
from rest_framework.response import Response

from config.urls import urlpatterns as api_urlpatterns
from knowledge import selectors
from tenants.api import OrgAPIView, not_found


class CountedAgentStatsApi(OrgAPIView):
    def get(self, request, slug):
        agent = selectors.agent_get(org=self.org, slug=slug)
        if agent is None:
            raise not_found("Agent not found.")
        chunks, documents, size = selectors.agent_stats_recount(org=self.org, agent=agent)
        return Response({"total_chunks": chunks, "document_count": documents, "total_size_bytes": size})


class CountedOrganizationStatsApi(OrgAPIView):
    def get(self, request):
        live_agents = "SELECT id FROM knowledge_agent WHERE organization_id = %s AND status <> 'deleted'"
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT (SELECT count(*) FROM ({live_agents}) AS a),"
                f" (SELECT count(*) FROM knowledge_chunk WHERE organization_id = %s AND agent_id IN ({live_agents})),"
                " count(*), coalesce(sum(size_bytes), 0) FROM knowledge_document"
                f" WHERE organization_id = %s AND status = 'ready' AND agent_id IN ({live_agents})",
                [self.org.pk] * 5,
            )
            agents, chunks, documents, size = cursor.fetchone()
        return Response(
            {"total_agents": agents, "total_chunks": chunks, "total_documents": documents, "total_size_bytes": size}
        )


urlpatterns = api_urlpatterns + [
    path("bench/counted/agents/<slug:slug>/stats", CountedAgentStatsApi.as_view()),
    path("bench/counted/stats", CountedOrganizationStatsApi.as_view()),
]
