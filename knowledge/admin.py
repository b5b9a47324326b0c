from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError

from knowledge.models import Agent, AgentStats
from knowledge.services import CONFIG_KEYS, agent_config_validate, agent_create, agent_update

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


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    form = AgentForm
    list_display = ["slug", "organization", "name", "status", "chunks", "documents", "created_at"]
    list_filter = ["status", "organization", "language"]
    search_fields = ["slug", "name", "organization__slug"]
    list_select_related = ["organization", "stats"]
    inlines = [AgentStatsInline]
    fields = ["organization", "slug", "name", "status", *CONFIG_KEYS, "created_at", "deleted_at"]

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
        else:
            created = agent_create(org=obj.organization, slug=obj.slug, name=obj.name, config=config)
            obj.pk = created.pk

    def get_inlines(self, request, obj):
        return self.inlines if obj else []
