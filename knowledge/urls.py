from django.urls import path

from knowledge import apis

urlpatterns = [
    path("agents", apis.AgentListCreateApi.as_view(), name="agent-list"),
    path("agents/<slug:slug>", apis.AgentDetailApi.as_view(), name="agent-detail"),
    path("agents/<slug:slug>/stats", apis.AgentStatsApi.as_view(), name="agent-stats"),
    path("stats", apis.OrganizationStatsApi.as_view(), name="org-stats"),
]
