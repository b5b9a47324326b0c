"""The API, plus what benches compare it with through the same HTTP stack. Bench only:
never routed in config/urls.py.

- The same statistics answered the slow way (COUNT/SUM over the rows on every request),
  for bench/ingest_stats.py.
- A search request without the search (bench/search.py): the same view, key and agent
  statement, body validation and response format, answering no results. What it costs
  is what every search pays on Django, DRF and gunicorn before its own work.
- The floors under that (bench/http_floor.py): a DRF view that does nothing; the same plus
  one Redis round trip; and plus the two round trips every authenticated, rate-limited
  request makes (a PostgreSQL statement, as the API key's; a Redis command, as the rate
  limit's), without Lore's work around them."""

from django.db import connection
from django.urls import path
from rest_framework.response import Response
from rest_framework.views import APIView

from config.urls import urlpatterns as api_urlpatterns
from knowledge import selectors
from search import apis as search_apis
from search import selectors as search_selectors
from tenants.api import OrgAPIView, not_found
from tenants.auth import claimed_key_prefix


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


def _no_results(search_request) -> Response:
    return Response({"results": [], "mode": search_request.mode, "took_ms": 0.0, "cached": False})


def _initial_without_prefetch(view, request, *args, **kwargs):
    view.early = search_apis._early_request(request, view.InputSerializer, claimed_key_prefix(request))
    OrgAPIView.initial(view, request, *args, **kwargs)
    view.admitted(request)


# Each validates its body and reads its agents as the search would (self.joined; the
# organization's digest and selection), then answers without searching: no shared-cache
# read either, sent early or not.
class AgentSearchWithoutSearchApi(search_apis.AgentSearchApi):
    initial = _initial_without_prefetch

    def post(self, request, slug):
        search_request, _ = self.early or search_apis._request(request.data)
        search_selectors.search_agent_from_row(self.joined)
        return _no_results(search_request)


class OrganizationSearchWithoutSearchApi(search_apis.OrganizationSearchApi):
    initial = _initial_without_prefetch

    def post(self, request):
        search_request, slugs = self.early or search_apis._request(request.data, self.InputSerializer)
        search_selectors.search_agents_get(org=self.org, slugs=slugs)
        return _no_results(search_request)


class FloorApi(APIView):
    """DRF with nothing to do: Lore's middleware, DRF's request, dispatch and JSON renderer."""

    authentication_classes, permission_classes, throttle_classes = (), (), ()

    def post(self, request):
        return Response({"ok": True})


def _redis_round_trip() -> None:
    from django_redis import get_redis_connection

    get_redis_connection("default").ping()


class FloorRedisApi(FloorApi):
    """FloorApi plus one Redis round trip: the least a request whose key and rate limit
    were both checked in Redis, in one script, would make."""

    def post(self, request):
        _redis_round_trip()
        return Response({"ok": True})


class FloorRoundTripsApi(FloorApi):
    """FloorApi plus a PostgreSQL and a Redis round trip, one after the other, as the API
    key's statement and the rate limit's script are."""

    def post(self, request):
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        _redis_round_trip()
        return Response({"ok": True})


urlpatterns = api_urlpatterns + [
    path("bench/floor/drf", FloorApi.as_view()),
    path("bench/floor/redis", FloorRedisApi.as_view()),
    path("bench/floor/round-trips", FloorRoundTripsApi.as_view()),
    path("bench/no-search/agents/<slug:slug>/search", AgentSearchWithoutSearchApi.as_view()),
    path("bench/no-search/search", OrganizationSearchWithoutSearchApi.as_view()),
    path("bench/counted/agents/<slug:slug>/stats", CountedAgentStatsApi.as_view()),
    path("bench/counted/stats", CountedOrganizationStatsApi.as_view()),
]
