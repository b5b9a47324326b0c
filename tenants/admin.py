"""API keys in the admin. Organizations are administered from the knowledge app
(knowledge/admin.py): deleting one deletes its agents, which this app knows nothing of."""

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.views.main import PAGE_VAR
from django.core.paginator import EmptyPage, PageNotAnInteger, Paginator
from django.utils import timezone
from django.utils.functional import cached_property

from tenants import audit
from tenants.models import ApiKey, AuditEvent
from tenants.services import api_key_create, api_key_revoke


def record(request, org, action: str, target_type: str, target_key, summary: dict | None = None):
    """An admin change's audit event, in the admin request's transaction (core/middleware.py)."""
    return audit.record(org=org, actor=audit.Actor.from_request(request), action=action, target_type=target_type,
                        target_key=str(target_key), summary=summary)  # fmt: skip


def record_change(request, org, action: str, target_type: str, target_key, form) -> None:
    """A change form's save: the changed fields, before and after (none changed: no event)."""
    if form.changed_data:
        after = {name: form.cleaned_data.get(name) for name in form.changed_data}
        before = {name: form.initial.get(name) for name in form.changed_data}
        record(request, org, action, target_type, target_key, {"changes": audit.changes(before, after)})


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
            super().save_model(request, obj, form, change)
            return record_change(request, obj.organization, "api_key.updated", "api_key", obj.prefix, form)
        key, raw_key = api_key_create(
            org=form.cleaned_data["organization"],
            name=form.cleaned_data["name"],
            scope=form.cleaned_data["scope"],
            expires_at=form.cleaned_data["expires_at"],
            created_by=request.user,
        )
        obj.pk = key.pk
        record(request, key.organization, "api_key.created", "api_key", key.prefix, {"name": key.name, "scope": key.scope})
        # Shown once: only the hash is stored.
        messages.warning(request, f"New API key (copy it now, it will not be shown again): {raw_key}")

    def has_revoke_permission(self, request):
        return request.user.has_perm("tenants.change_apikey")

    @admin.action(description="Revoke selected API keys", permissions=["revoke"])
    def revoke(self, request, queryset):
        revoked = 0
        for key in queryset.filter(revoked_at__isnull=True):
            if api_key_revoke(org=key.organization, key_id=key.pk):
                revoked += 1
                record(request, key.organization, "api_key.revoked", "api_key", key.prefix, {"name": key.name})
        self.message_user(request, f"Revoked {revoked} key(s) at {timezone.now():%Y-%m-%d %H:%M} UTC.")


class NoCountPaginator(Paginator):
    """Pages without COUNT: the page asked for is read with one row more, which says
    whether there is a next one. `count` is what the pages so far show (plus one when more
    follow): the admin links to the next page, never to the last. Needs the page number
    before `count` is read (ModelAdmin.get_paginator passes the request's)."""

    def __init__(self, object_list, per_page, *, number: int = 1, **kwargs):
        super().__init__(object_list, per_page, **kwargs)
        self.number = number
        self._rows = None

    def _probe(self) -> list:
        if self._rows is None:
            bottom = (self.number - 1) * self.per_page
            self._rows = list(self.object_list[bottom : bottom + self.per_page + 1])
        return self._rows

    @cached_property
    def count(self) -> int:
        return (self.number - 1) * self.per_page + len(self._probe())

    def validate_number(self, number):
        # Any page from 1 on: whether it holds rows is seen when it is read, not counted.
        try:
            number = int(number)
        except (TypeError, ValueError) as exc:
            raise PageNotAnInteger("That page number is not an integer") from exc
        if number < 1:
            raise EmptyPage("That page number is less than 1")
        return number

    def page(self, number):
        number = self.validate_number(number)
        if number == self.number:
            rows = self._probe()[: self.per_page]
        else:
            rows = list(self.object_list[(number - 1) * self.per_page : number * self.per_page])
        return self._get_page(rows, number, self)


class ActionFilter(admin.SimpleListFilter):
    """The known actions, from the code (a list of the column's values would scan the table)."""

    title = parameter_name = "action"

    def lookups(self, request, model_admin):
        return [(action, action) for action in audit.ACTIONS]

    def queryset(self, request, queryset):
        return queryset.filter(action=self.value()) if self.value() else queryset


class ReadOnlyAdmin(admin.ModelAdmin):
    """Pages that show rows and change none (the model's own actions may)."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    """Read-only: the table is append-only (the database refuses changes anyway). Newest
    first by id, the primary key's index, across organizations; never counted."""

    list_display = ["time", "organization_slug", "action", "actor", "target_type", "target_key", "request_id"]
    list_filter = [ActionFilter, "actor_kind", "target_type"]
    # Exact matches: each is one comparison, not a scan for a substring.
    search_fields = ["=organization_slug", "=target_key", "=request_id", "=actor_key_prefix", "=actor_username"]
    ordering = ["-id"]
    show_full_result_count = False
    list_max_show_all = 0
    readonly_fields = fields = [
        "time", "organization", "organization_slug", "action", "target_type", "target_key", "summary", "actor_kind",
        "actor_key_id", "actor_key_prefix", "actor_user_id", "actor_username", "actor_name", "request_id", "client_ip",
        "user_agent",
    ]  # fmt: skip

    def get_queryset(self, request):
        return AuditEvent.unscoped.all()

    def get_paginator(self, request, queryset, per_page, orphans=0, allow_empty_first_page=True):
        page = request.GET.get(PAGE_VAR, "1")
        number = int(page) if page.isdigit() and int(page) > 0 else 1
        return NoCountPaginator(queryset, per_page, number=number, orphans=0, allow_empty_first_page=allow_empty_first_page)

    @admin.display(description="actor")
    def actor(self, obj):
        return obj.actor_key_prefix or obj.actor_username or obj.actor_name or obj.actor_kind
