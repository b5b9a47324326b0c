from django.urls import path

from knowledge import apis, deletion_apis, document_apis, export_apis

urlpatterns = [
    path("agents", apis.AgentListCreateApi.as_view(), name="agent-list"),
    path("agents/<slug:slug>", apis.AgentDetailApi.as_view(), name="agent-detail"),
    path("agents/<slug:slug>/stats", apis.AgentStatsApi.as_view(), name="agent-stats"),
    path("agents/<slug:slug>/documents", document_apis.DocumentListCreateApi.as_view(), name="document-list"),
    path("agents/<slug:slug>/documents/batch", document_apis.DocumentBatchApi.as_view(), name="document-batch"),
    # Keys are the caller's stable ids and may contain slashes (file paths).
    path("agents/<slug:slug>/documents/<path:key>", document_apis.DocumentDetailApi.as_view(), name="document-detail"),
    path("agents/<slug:slug>/chunks/delete", document_apis.ChunksDeleteApi.as_view(), name="chunk-delete"),
    path("ingestions/<int:job_id>", document_apis.IngestionJobApi.as_view(), name="ingestion-detail"),
    path("deletions", deletion_apis.DeletionJobListApi.as_view(), name="deletion-list"),
    path("deletions/<int:job_id>", deletion_apis.DeletionJobDetailApi.as_view(), name="deletion-detail"),
    path("deletions/<int:job_id>/cancel", deletion_apis.DeletionJobCancelApi.as_view(), name="deletion-cancel"),
    path("deletions/<int:job_id>/retry", deletion_apis.DeletionJobRetryApi.as_view(), name="deletion-retry"),
    path("exports", export_apis.ExportCreateApi.as_view(), name="export-create"),
    path("exports/<int:job_id>", export_apis.ExportDetailApi.as_view(), name="export-detail"),
    path("exports/<int:job_id>/download", export_apis.ExportDownloadApi.as_view(), name="export-download"),
    path("stats", apis.OrganizationStatsApi.as_view(), name="org-stats"),
    path("usage", apis.UsageApi.as_view(), name="org-usage"),
]
