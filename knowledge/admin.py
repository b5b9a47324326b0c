from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import ValidationError
from django.db import transaction
from django.template.response import TemplateResponse
from django.utils.html import format_html

from knowledge.models import Agent, AgentStats, DeletionJob
from knowledge.selectors import organization_stats
from knowledge.services import (
    CONFIG_KEYS,
    agent_config_validate,
    agent_create,
    agent_delete_request,
    agent_settings,
    agent_update,
    deletion_job_cancel,
    deletion_job_retry,
    deletion_job_summary,
    organization_delete_request,
)
from tenants.admin import ReadOnlyAdmin, record, record_change
from tenants.errors import ApiError
from tenants.models import Organization
from tenants.services import LIMIT_FIELDS, RETENTION_FIELDS

STATS_FIELDS = [
    "total_chunks", "document_count", "total_size_bytes", "data_version", "last_ingested_at",
    "last_searched_at", "search_count", "avg_search_latency_ms", "cache_hit_rate",
]  # fmt: skip


class AgentStatsInline(admin.StackedInline):
    model = AgentStats
    can_delete = False
    fields = readonly_fields = STATS_FIELDS
    verbose_name_plural = "statistics"

    def has_add_permission(self, request, obj=None):
        return False


class AgentForm(forms.ModelForm):
    def clean(self):
        cleaned = super().clean()
        try:
            agent_config_validate({key: cleaned[key] for key in CONFIG_KEYS if key in cleaned})
        except ValidationError as exc:
            for field, messages in exc.message_dict.items():
                self.add_error(field.removeprefix("config."), messages)
        return cleaned


def confirm_deletion_page(modeladmin, request, queryset, *, rows: list[dict], intro: str, confirm: str):
    """The confirmation step of a deletion action: what goes, with its size from the stats
    rows (never a COUNT of chunks); posting it runs the action again with post=yes."""
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": confirm.rstrip("."), "intro": intro, "confirm": confirm, "rows": rows, "queryset": queryset,
        "total_chunks": sum(row["chunks"] for row in rows), "total_documents": sum(row["documents"] for row in rows),
        "opts": modeladmin.model._meta, "action": request.POST.get("action"),
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
    }  # fmt: skip
    return TemplateResponse(request, "admin/knowledge/confirm_deletion.html", context)


class NoBlockingDeleteMixin:
    """Django's own delete would cascade through every chunk in one request: deletions
    go through jobs (the admin actions) instead, which need the model's delete permission
    all the same (a view-only user sees the action refused)."""

    def has_delete_permission(self, request, obj=None):
        return False

    def has_queue_deletion_permission(self, request):
        opts = self.model._meta
        return request.user.has_perm(f"{opts.app_label}.delete_{opts.model_name}")


@admin.register(Agent)
class AgentAdmin(NoBlockingDeleteMixin, admin.ModelAdmin):
    form = AgentForm
    list_display = ["slug", "organization", "name", "status", "chunks", "documents", "created_at"]
    list_filter = ["status", "organization", "language"]
    search_fields = ["slug", "name", "organization__slug"]
    list_select_related = ["organization", "stats"]
    inlines = [AgentStatsInline]
    fields = ["organization", "slug", "name", "status", *CONFIG_KEYS, "created_at", "deleted_at"]
    actions = ["queue_deletion"]

    def get_queryset(self, request):
        return Agent.unscoped.select_related("organization", "stats")

    def get_readonly_fields(self, request, obj=None):
        always = ["status", "created_at", "deleted_at"]
        return always if obj is None else [*always, "organization", "slug"]

    @admin.display(ordering="stats__total_chunks")
    def chunks(self, obj):
        return obj.stats.total_chunks

    @admin.display(ordering="stats__document_count")
    def documents(self, obj):
        return obj.stats.document_count

    def save_model(self, request, obj, form, change):
        config = {key: form.cleaned_data[key] for key in CONFIG_KEYS if key in form.cleaned_data}
        if change:
            agent_update(org=obj.organization, agent=obj, name=obj.name, config=config)
            record_change(request, obj.organization, "agent.updated", "agent", obj.slug, form)
        else:
            created = agent_create(org=obj.organization, slug=obj.slug, name=obj.name, config=config)
            obj.pk = created.pk
            record(request, obj.organization, "agent.created", "agent", obj.slug, {"settings": agent_settings(created)})

    def get_inlines(self, request, obj):
        return self.inlines if obj else []

    @admin.action(description="Queue deletion of selected agents", permissions=["queue_deletion"])
    def queue_deletion(self, request, queryset):
        agents = [a for a in queryset.select_related("organization", "stats") if a.status != Agent.Status.DELETED]
        if request.POST.get("post") != "yes":
            rows = [
                {"label": f"{a.organization.slug}/{a.slug}", "chunks": a.stats.total_chunks, "documents": a.stats.document_count}
                for a in agents
            ]
            intro = "These agents become invisible to search and stop taking documents now; their data is deleted in the background."
            return confirm_deletion_page(self, request, queryset, rows=rows, intro=intro, confirm="Queue the deletion")
        jobs = []
        for agent in agents:
            jobs.append(agent_delete_request(org=agent.organization, agent=agent, user=request.user))
            record(request, agent.organization, "agent.delete_requested", "agent", agent.slug, {"deletion_job": jobs[-1].pk})
        self.message_user(request, f"Deletion queued for {len(jobs)} agent(s): job(s) {', '.join(str(j.pk) for j in jobs)}.")


@admin.register(DeletionJob)
class DeletionJobAdmin(ReadOnlyAdmin):  # jobs change through their worker and the cancel/retry actions
    list_display = [
        "id", "organization", "agent", "scope", "status", "progress_bar", "items", "attempts", "heartbeat_at",
        "created_at", "requested_by",
    ]  # fmt: skip
    list_filter = ["status", "scope"]
    search_fields = ["organization__slug", "agent__slug"]
    list_select_related = ["organization", "agent", "requested_by_key", "requested_by_user"]
    fields = [
        "organization", "agent", "scope", "target", "status", "progress_bar", "total_items", "processed_items",
        "eta_seconds", "batch_size", "cursor", "attempts", "last_error", "requested_by_key", "requested_by_user",
        "created_at", "started_at", "heartbeat_at", "finished_at",
    ]  # fmt: skip
    readonly_fields = fields
    actions = ["cancel", "retry"]

    def get_queryset(self, request):
        return DeletionJob.unscoped.select_related("organization", "agent")

    @admin.display(description="progress")
    def progress_bar(self, obj):
        return format_html('<progress value="{}" max="100"></progress> {}%', obj.progress, obj.progress)

    @admin.display(description="items")
    def items(self, obj):
        return f"{obj.processed_items:,} / {obj.total_items:,}"

    @admin.display(description="requested by")
    def requested_by(self, obj):
        return obj.requested_by_user or obj.requested_by_key or "command line"

    # Cancelling or retrying a job changes it: Django's change permission on deletion jobs,
    # which the read-only pages above do not otherwise use.
    def has_run_permission(self, request):
        return request.user.has_perm("knowledge.change_deletionjob")

    @admin.action(description="Cancel selected deletions", permissions=["run"])
    def cancel(self, request, queryset):
        self._each(request, queryset, deletion_job_cancel, "Cancelled", "deletion_job.cancelled")

    @admin.action(description="Retry selected deletions", permissions=["run"])
    def retry(self, request, queryset):
        self._each(request, queryset, deletion_job_retry, "Queued again", "deletion_job.retried")

    def _each(self, request, queryset, service, verb, action):
        done = []
        for job in queryset.select_related("organization").order_by("pk"):
            try:
                with transaction.atomic():  # one job's change with its event; a refused one has neither
                    changed = service(org=job.organization, job=job)
                    record(request, job.organization, action, "deletion_job", job.pk, deletion_job_summary(changed))
                done.append(str(job.pk))
            except ApiError as exc:
                self.message_user(request, f"Job {job.pk}: {exc.message}", level=messages.WARNING)
        if done:
            self.message_user(request, f"{verb}: job(s) {', '.join(done)}.")


@admin.register(Organization)
class OrganizationAdmin(NoBlockingDeleteMixin, admin.ModelAdmin):
    list_display = ["slug", "name", "is_active", "created_at"]
    list_filter = ["is_active"]
    search_fields = ["slug", "name"]
    readonly_fields = ["created_at"]
    fieldsets = [
        (None, {"fields": ["slug", "name", "is_active", "created_at"]}),
        (
            "Rate limits (requests per minute; in flight: at once per web process; empty: the default, 0: none)",
            {"fields": ["search_rate", "write_rate", "read_rate", "max_in_flight"]},
        ),
        ("Quotas (empty: the default, 0: none)", {"fields": ["max_agents", "max_documents", "max_chunks", "max_bytes", "max_jobs"]}),
        ("Retention (days kept; empty: the default, 0: forever)", {"fields": list(RETENTION_FIELDS)}),
    ]
    actions = ["delete_organization"]

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if not change:
            return record(request, obj, "organization.created", "organization", obj.slug, {"name": obj.name})
        limits = set(form.changed_data) & {*LIMIT_FIELDS, *RETENTION_FIELDS}
        record_change(request, obj, "organization.limits_changed" if limits else "organization.updated", "organization", obj.slug, form)

    @admin.action(description="Delete selected organizations (in the background)", permissions=["queue_deletion"])
    def delete_organization(self, request, queryset):
        if request.POST.get("post") != "yes":
            rows = []
            for org in queryset:
                totals = organization_stats(org=org)
                rows.append({"label": org.slug, "chunks": totals["total_chunks"], "documents": totals["total_documents"]})
            intro = (
                "These organizations are deactivated now (their API keys stop working), their agents are deleted "
                "in the background, then the organizations themselves."
            )
            return confirm_deletion_page(self, request, queryset, rows=rows, intro=intro, confirm="Delete the organizations")
        jobs = []
        for org in queryset:
            jobs.append(organization_delete_request(org=org, user=request.user))
            record(request, org, "organization.delete_requested", "organization", org.slug, {"deletion_job": jobs[-1].pk})
        self.message_user(request, f"Deletion queued for {len(jobs)} organization(s): job(s) {', '.join(str(j.pk) for j in jobs)}.")
