from django import forms
from django.contrib import admin, messages
from django.utils import timezone

from knowledge.admin import NoBlockingDeleteMixin, confirm_deletion_page
from knowledge.selectors import organization_stats
from knowledge.services import organization_delete_request
from tenants.models import ApiKey, Organization
from tenants.services import api_key_create, api_key_revoke


@admin.register(Organization)
class OrganizationAdmin(NoBlockingDeleteMixin, admin.ModelAdmin):
    list_display = ["slug", "name", "is_active", "created_at"]
    list_filter = ["is_active"]
    search_fields = ["slug", "name"]
    readonly_fields = ["created_at"]
    fieldsets = [
        (None, {"fields": ["slug", "name", "is_active", "created_at"]}),
        ("Rate limits (requests per minute; empty: the default, 0: none)", {"fields": ["search_rate", "write_rate", "read_rate"]}),
        ("Quotas (empty: the default, 0: none)", {"fields": ["max_agents", "max_documents", "max_chunks", "max_bytes", "max_jobs"]}),
    ]
    actions = ["delete_organization"]

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
        jobs = [organization_delete_request(org=org, user=request.user) for org in queryset]
        self.message_user(request, f"Deletion queued for {len(jobs)} organization(s): job(s) {', '.join(str(j.pk) for j in jobs)}.")


class ApiKeyCreateForm(forms.ModelForm):
    class Meta:
        model = ApiKey
        fields = ["organization", "name", "scope", "expires_at"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["__str__", "organization", "scope", "created_at", "expires_at", "last_used_at", "state"]
    list_filter = ["scope", "organization", ("revoked_at", admin.EmptyFieldListFilter), ("expires_at", admin.EmptyFieldListFilter)]
    search_fields = ["prefix", "name", "organization__slug"]
    readonly_fields = ["organization", "prefix", "scope", "created_at", "created_by", "last_used_at", "revoked_at"]
    fields = ["organization", "name", "prefix", "scope", "expires_at", "created_at", "created_by", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    def get_queryset(self, request):
        return ApiKey.unscoped.select_related("organization")

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = ApiKeyCreateForm
        return super().get_form(request, obj, **kwargs)

    def get_fields(self, request, obj=None):
        return ["organization", "name", "scope", "expires_at"] if obj is None else self.fields

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else self.readonly_fields

    @admin.display(description="state")
    def state(self, obj):
        if obj.is_revoked:
            return "revoked"
        return "expired" if obj.is_expired else "active"

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        key, raw_key = api_key_create(
            org=form.cleaned_data["organization"],
            name=form.cleaned_data["name"],
            scope=form.cleaned_data["scope"],
            expires_at=form.cleaned_data["expires_at"],
            created_by=request.user,
        )
        obj.pk = key.pk
        # Shown once: only the hash is stored.
        messages.warning(request, f"New API key (copy it now, it will not be shown again): {raw_key}")

    def has_revoke_permission(self, request):
        return request.user.has_perm("tenants.change_apikey")

    @admin.action(description="Revoke selected API keys", permissions=["revoke"])
    def revoke(self, request, queryset):
        revoked = sum(api_key_revoke(org=key.organization, key_id=key.pk) for key in queryset.filter(revoked_at__isnull=True))
        self.message_user(request, f"Revoked {revoked} key(s) at {timezone.now():%Y-%m-%d %H:%M} UTC.")
