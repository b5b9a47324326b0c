"""The audit table against the database: append-only for the application and the bypass
role alike; only the retention task removes events, in batches."""

from datetime import timedelta

import pytest
from django.db import DatabaseError, transaction
from django.utils import timezone

from core import db
from knowledge.models import IngestionJob
from tenants import retention
from tenants.audit import Actor, record
from tenants.models import AuditEvent
from tenants.tasks import enforce_retention
from tests.factories import AgentFactory


def _events(org, n: int, *, days_ago: int = 0):
    if not days_ago:
        with db.tenant(org):
            return [record(org=org, actor=Actor.system("test"), action="agent.created", target_type="agent") for _ in range(n)]
    # An old event is inserted as old: nothing can backdate one.
    time = timezone.now() - timedelta(days=days_ago)
    return [
        AuditEvent.objects.for_org(org).create(organization_slug=org.slug, actor_kind="system", action="agent.created", time=time)
        for _ in range(n)
    ]


@pytest.mark.parametrize("scope", ["tenant", "unscoped"])
@pytest.mark.parametrize("statement", [
    "UPDATE tenants_auditevent SET action = 'forged' WHERE organization_id = %s",
    "DELETE FROM tenants_auditevent WHERE organization_id = %s",
])  # fmt: skip
def test_the_application_and_the_bypass_role_can_neither_update_nor_delete(org_a, scope, statement):
    event = _events(org_a, 1)[0]
    opened = db.tenant(org_a) if scope == "tenant" else db.unscoped("test")
    with pytest.raises(DatabaseError, match="append-only|permission denied"):
        with opened as sql:
            sql.execute(statement, [org_a.pk])
    assert AuditEvent.unscoped.get(pk=event.pk).action == "agent.created"


def test_the_orm_cannot_change_or_delete_events_either(org_a):
    event = _events(org_a, 1)[0]
    for change in (lambda: AuditEvent.unscoped.filter(pk=event.pk).update(action="x"), lambda: AuditEvent.unscoped.filter(pk=event.pk).delete()):
        with pytest.raises(DatabaseError), transaction.atomic():
            change()
    assert AuditEvent.unscoped.filter(pk=event.pk).exists()


def test_retention_removes_old_events_in_batches_per_organization(org_a, org_b, settings):
    settings.LORE_AUDIT_RETENTION_DAYS = 30
    old_a, new_a = _events(org_a, 5, days_ago=40), _events(org_a, 2)
    _events(org_b, 3, days_ago=40)
    org_b.audit_retention_days = 0  # kept forever
    org_b.save()
    removed = retention.enforce(batch_size=2)
    assert removed["audit_events"] == 5
    assert set(AuditEvent.unscoped.filter(organization=org_a).values_list("pk", flat=True)) == {e.pk for e in new_a}
    assert AuditEvent.unscoped.filter(organization=org_b).count() == 3
    assert old_a  # deleted in three batches of at most two


def test_a_run_stops_after_its_batches_and_the_next_goes_on(org_a, settings):
    settings.LORE_AUDIT_RETENTION_DAYS = 1
    _events(org_a, 5, days_ago=3)
    assert retention.enforce(batch_size=2, max_batches=1)["audit_events"] == 2
    assert retention.enforce(batch_size=2)["audit_events"] == 3


def test_retention_of_finished_jobs_keeps_unfinished_ones(org_a, settings):
    settings.LORE_JOB_RETENTION_DAYS = 7
    agent = AgentFactory(organization=org_a)
    old = timezone.now() - timedelta(days=10)
    for status in ("completed", "failed", "pending"):
        IngestionJob.objects.for_org(org_a).create(agent=agent, status=status, created_at=old)
    enforce_retention()
    assert list(IngestionJob.objects.for_org(org_a).values_list("status", flat=True)) == ["pending"]
    assert retention.retention_days(org_a, "ingestion_jobs") == 7


def test_retention_hooks_run_with_the_rules(db):
    seen = []
    retention.register_hook("test_files", lambda *, now: seen.append(now) or 4)
    try:
        assert retention.enforce()["test_files"] == 4 and seen
    finally:
        retention._hooks.pop("test_files")
