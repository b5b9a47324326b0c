from django.urls import path

from knowledge import apis, document_apis

urlpatterns = [
    path("agents", apis.AgentListCreateApi.as_view(), name="agent-list"),
    path("agents/<slug:slug>", apis.AgentDetailApi.as_view(), name="agent-detail"),
    path("agents/<slug:slug>/stats", apis.AgentStatsApi.as_view(), name="agent-stats"),
    path("agents/<slug:slug>/documents", document_apis.DocumentListCreateApi.as_view(), name="document-list"),
    path("agents/<slug:slug>/documents/batch", document_apis.DocumentBatchApi.as_view(), name="document-batch"),
    # Keys are the caller's stable ids and may contain slashes (file paths).
    path("agents/<slug:slug>/documents/<path:key>", document_apis.DocumentDetailApi.as_view(), name="document-detail"),
    path("ingestions/<int:job_id>", document_apis.IngestionJobApi.as_view(), name="ingestion-detail"),
    path("stats", apis.OrganizationStatsApi.as_view(), name="org-stats"),
]
