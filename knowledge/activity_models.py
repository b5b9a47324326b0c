"""The activity history's tables (knowledge/activity.py counts, the tracking flush writes,
the rollup task folds minutes into hours). Imported by knowledge/models.py."""

from django.contrib.postgres.fields import ArrayField
from django.db import models

from tenants.models import Organization
from tenants.scoping import TenantManager, UnscopedManager


class Period(models.IntegerChoices):
    MINUTE = 60
    HOUR = 3600


class ActivityCounters(models.Model):
    """One period's counts. `searches` is also the latency's count; `latency_buckets` the
    histogram over knowledge.activity.LATENCY_BUCKETS_MS (the last bucket: slower)."""

    period = models.PositiveIntegerField(choices=Period.choices)
    start = models.DateTimeField()
    searches = models.BigIntegerField(default=0)
    cache_hits = models.BigIntegerField(default=0)
    latency_ms_sum = models.FloatField(default=0)
    latency_buckets = ArrayField(models.BigIntegerField(), default=list)
    embedding_calls = models.BigIntegerField(default=0)
    embedding_errors = models.BigIntegerField(default=0)
    documents_ingested = models.BigIntegerField(default=0)
    chunks_ingested = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)

    class Meta:
        abstract = True


class AgentActivity(ActivityCounters):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    # Deleted with their organization (its index leads with it); an agent row is never deleted
    # on its own (it stays as `deleted`), and a cascade by agent_id would scan this table.
    agent = models.ForeignKey("knowledge.Agent", on_delete=models.DO_NOTHING, related_name="+")

    unscoped = UnscopedManager()
    objects = TenantManager()

    class Meta:
        constraints = [
            # An agent's chart reads its own range of this index.
            models.UniqueConstraint(fields=["organization", "agent", "period", "start"], name="agentact_org_agent_uniq"),
        ]
        indexes = [
            # The rollup and pruning read an organization's old minutes by period and time.
            models.Index(fields=["organization", "period", "start"], name="agentact_org_period_idx"),
        ]


class OrganizationActivity(ActivityCounters):
    """The organization's own totals: a search across its agents counts once here (once per
    agent in AgentActivity), and its chart is one range of this table's index."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")

    unscoped = UnscopedManager()
    objects = TenantManager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "period", "start"], name="orgact_org_period_uniq"),
        ]


class SiteActivity(ActivityCounters):
    """Every organization's activity added up, for the operators' overview. Not tenant data:
    it names no organization."""

    class Meta:
        constraints = [models.UniqueConstraint(fields=["period", "start"], name="siteact_period_uniq")]
