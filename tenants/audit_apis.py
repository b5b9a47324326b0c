"""GET /audit-events: the organization's audit trail, newest first, a page at a time.

Pages are keyset pages on (time, id), handed out as an opaque cursor: each page is one
index range scan (audit_org_time_idx and its siblings), however deep, with no OFFSET and
no COUNT."""

import base64
import binascii
from datetime import datetime

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response

from core.fields import StrictCharField
from tenants import selectors
from tenants.api import OrgAPIView
from tenants.errors import invalid
from tenants.models import AuditEvent

ACTOR_PATTERN = r"^(api_key|user|command|system|[0-9a-f]{8})$"
CURSOR_PATTERN = r"^[A-Za-z0-9_-]{1,200}$"


def cursor_encode(event: AuditEvent) -> str:
    return base64.urlsafe_b64encode(f"{event.time.isoformat()}|{event.pk}".encode()).decode().rstrip("=")


def cursor_decode(cursor: str) -> tuple[datetime, int]:
    try:
        time, pk = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split("|")
        return datetime.fromisoformat(time), int(pk)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise invalid("cursor", "Not a cursor this endpoint gave out (next_cursor of a previous page).") from exc


class AuditEventOutput(serializers.Serializer):
    id = serializers.IntegerField()
    time = serializers.DateTimeField()
    action = serializers.CharField()
    actor = inline_serializer("AuditActor", {
        "kind": serializers.ChoiceField(choices=AuditEvent.ActorKind.values, source="actor_kind"),
        "key_id": serializers.IntegerField(source="actor_key_id", allow_null=True),
        "key_prefix": serializers.CharField(source="actor_key_prefix"),
        "user_id": serializers.IntegerField(source="actor_user_id", allow_null=True),
        "username": serializers.CharField(source="actor_username"),
        "name": serializers.CharField(source="actor_name", help_text="the command, or the system's part"),
    }, source="*")  # fmt: skip
    target = inline_serializer(
        "AuditTarget", {"type": serializers.CharField(source="target_type"), "key": serializers.CharField(source="target_key")},
        source="*",
    )
    summary = serializers.JSONField(help_text="counts and keys; for changes, {field: {before, after}}")
    request_id = serializers.CharField()
    client_ip = serializers.IPAddressField(allow_null=True)
    user_agent = serializers.CharField()


class AuditEventListApi(OrgAPIView):
    key_scopes = {"GET": "admin"}

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "AuditEventListInput"

        action = StrictCharField(max_length=64, required=False, help_text="e.g. agent.created")
        actor = serializers.RegexField(
            ACTOR_PATTERN, max_length=8, required=False, help_text="an actor kind (api_key, user, command, system) or an API key's prefix"
        )
        target_type = StrictCharField(max_length=32, required=False, help_text="e.g. agent, api_key, deletion_job")
        target_key = StrictCharField(max_length=600, required=False, help_text="with target_type or alone")
        since = serializers.DateTimeField(required=False, help_text="events at or after this time")
        until = serializers.DateTimeField(required=False, help_text="events before this time")
        cursor = serializers.RegexField(CURSOR_PATTERN, max_length=200, required=False, help_text="next_cursor of the previous page")
        limit = serializers.IntegerField(min_value=1, max_value=200, required=False, default=50)

    query_parameters = {"GET": tuple(InputSerializer().fields)}

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "AuditEventPage"

        results = AuditEventOutput(many=True)
        next_cursor = serializers.CharField(allow_null=True, help_text="for the next (older) page; null on the last")

    @extend_schema(operation_id="audit_events_list", parameters=[InputSerializer], responses=OutputSerializer)
    def get(self, request):
        for name, value in request.query_params.items():
            if value == "":  # DRF takes an empty date-time for none; the schema does not
                raise invalid(name, "Must not be empty.")
        data = self.InputSerializer(data=request.query_params)
        data.is_valid(raise_exception=True)
        filters = dict(data.validated_data)
        limit, cursor = filters.pop("limit"), filters.pop("cursor", None)
        events = selectors.audit_event_list(org=self.org, before=cursor_decode(cursor) if cursor else None, limit=limit + 1, **filters)
        more = len(events) > limit
        events = events[:limit]
        next_cursor = cursor_encode(events[-1]) if more else None
        return Response(self.OutputSerializer({"results": events, "next_cursor": next_cursor}).data)

