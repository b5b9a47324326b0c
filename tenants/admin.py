"""API keys in the admin. Organizations are administered from the knowledge app
(knowledge/admin.py): deleting one deletes its agents, which this app knows nothing of."""

from django import forms
from django.contrib import admin, messages
from django.utils import timezone

from tenants.models import ApiKey
from tenants.services import api_key_create, api_key_revoke


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
