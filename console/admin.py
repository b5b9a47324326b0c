"""Read-only admin lists of documents and ingestion jobs. They read every tenant (the
unscoped managers) and never COUNT the table: no full count, and the paginator's count is
the planner's estimate."""

from django.contrib import admin
from django.core.paginator import Paginator
from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.html import format_html

from console.selectors import estimated_count
from knowledge.chunking import CONTENT_TYPES
from knowledge.models import Document, IngestionJob
from tenants import admin as tenants_admin


class EstimatedCountPaginator(Paginator):
    @cached_property
    def count(self) -> int:
        return estimated_count(self.object_list)


class ContentTypeFilter(admin.SimpleListFilter):
    """The content types Lore knows, not a SELECT DISTINCT over every document."""

    title, parameter_name = "content type", "content_type"

    def lookups(self, request, model_admin):
        return [(name, name) for name in CONTENT_TYPES]

    def queryset(self, request, queryset):
        return queryset.filter(content_type=self.value()) if self.value() else queryset


class ReadOnlyAdmin(tenants_admin.ReadOnlyAdmin):
    """Read-only lists of tables too large to count: the planner's estimate instead."""

    paginator = EstimatedCountPaginator
    show_full_result_count = False
    list_per_page = 50


@admin.register(Document)
class DocumentAdmin(ReadOnlyAdmin):
    list_display = ["key", "console_link", "organization", "agent", "status", "chunk_count", "size_bytes", "updated_at", "short_error"]
    list_filter = ["status", ContentTypeFilter, "organization"]
    # Exact slugs and key prefixes: no substring scan of every document.
    search_fields = ["^key", "=agent__slug", "=organization__slug"]
    list_select_related = ["organization", "agent"]
    ordering = ["-id"]  # the primary key's index, not a sort of every row
    exclude = ["metadata"]
    readonly_fields = [f.name for f in Document._meta.fields if f.name != "metadata"]

    def get_queryset(self, request):
        return Document.unscoped.select_related("organization", "agent")

    @admin.display(description="console")
    def console_link(self, obj):
        return format_html('<a href="{}">chunks</a>', reverse("console:document", args=[obj.pk]))

    @admin.display(description="error")
    def short_error(self, obj):
        return obj.error[:80]


@admin.register(IngestionJob)
class IngestionJobAdmin(ReadOnlyAdmin):
    list_display = ["id", "organization", "agent", "status", "progress", "added", "updated", "unchanged", "failed", "attempts", "created_at", "finished_at"]
    list_filter = ["status", "organization"]
    search_fields = ["=organization__slug", "=agent__slug"]
    list_select_related = ["organization", "agent"]
    ordering = ["-id"]
    exclude = ["payload"]  # the documents' text, until the job ends

    def get_queryset(self, request):
        return IngestionJob.unscoped.select_related("organization", "agent").defer("payload")

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in IngestionJob._meta.fields if f.name != "payload"] + ["progress"]

    @admin.display(description="progress")
    def progress(self, obj):
        done, total = obj.processed_documents, obj.total_documents
        pct = 100 if obj.status == "completed" else int(100 * done / total) if total else 0
        return format_html('<progress value="{}" max="100"></progress> {} / {}', pct, done, total)
