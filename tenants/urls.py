from django.urls import path

from tenants import audit_apis

urlpatterns = [
    path("audit-events", audit_apis.AuditEventListApi.as_view(), name="audit-event-list"),
]
