"""The console's URLs, under /admin/console/: each view through the admin site's
admin_view (staff only; others are sent to the admin login)."""

from django.contrib import admin
from django.urls import path

from console import actions, views

app_name = "console"


def _staff(view):
    return admin.site.admin_view(view)


urlpatterns = [
    path("", _staff(views.overview), name="overview"),
    path("jobs.json", _staff(views.jobs_json), name="jobs"),
    path("organizations/<int:org_id>/", _staff(views.organization), name="organization"),
    path("agents/<int:agent_id>/", _staff(views.agent), name="agent"),
    path("agents/<int:agent_id>/search", _staff(actions.playground), name="playground"),
    path("agents/<int:agent_id>/upload", _staff(actions.upload), name="upload"),
    path("agents/<int:agent_id>/delete", _staff(actions.delete_agent), name="delete_agent"),
    path("documents/<int:document_id>/", _staff(views.document), name="document"),
    path("documents/<int:document_id>/reingest", _staff(actions.reingest), name="reingest"),
    path("documents/<int:document_id>/delete", _staff(actions.delete_document), name="delete_document"),
]
