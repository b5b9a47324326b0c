"""Reading the activity history back: a chart's series is one indexed range of one table
(the site's, an organization's or an agent's rows), binned in Python."""

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Sum
from django.utils import timezone

from core import db
from knowledge import activity
from knowledge.activity_models import AgentActivity, OrganizationActivity, Period, SiteActivity
from knowledge.models import Agent
from tenants.models import Organization

@dataclass
class Bin:
    start: datetime
    minutes: float = 1.0  # how long the bin is (the one in progress: how much of it has passed)
    counts: dict = field(default_factory=lambda: dict.fromkeys(activity.COUNTERS, 0))
    buckets: list = field(default_factory=lambda: [0] * activity.BUCKETS)

    def percentile(self, q: float) -> float | None:
        return percentile(self.buckets, q)

    @property
    def hit_rate(self) -> float | None:
        return self.counts["cache_hits"] / self.counts["searches"] if self.counts["searches"] else None


def percentile(buckets: list, q: float) -> float | None:
    """The q-quantile (0..1) of a latency histogram, interpolated within its bucket (the
    open last bucket answers its lower bound)."""
    total = sum(buckets)
    if not total:
        return None
    rank, seen = q * total, 0
    for i, n in enumerate(buckets):
        if n and seen + n >= rank:
            low = activity.LATENCY_BUCKETS_MS[i - 1] if i else 0
            if i >= len(activity.LATENCY_BUCKETS_MS):
                return float(low)
            return low + (activity.LATENCY_BUCKETS_MS[i] - low) * (rank - seen) / n
        seen += n
    return float(activity.LATENCY_BUCKETS_MS[-1])


def activity_series(
    *, org: Organization | None = None, agent: Agent | None = None, hours: int = 24, bin_minutes: int = 10, now=None
) -> list[Bin]:
    """The last `hours` of activity in bins of `bin_minutes`, oldest first, empty bins
    included: the site's without `org`, the organization's with it, the agent's with both.
    One statement: a range of the table's unique index (organization, [agent,] period,
    start) over the minute rows (kept LORE_ACTIVITY_MINUTE_DAYS), summed per bin by
    PostgreSQL. The last bin is the one in progress: its `minutes` say how much of it has passed."""
    now = now or timezone.now()
    step = timedelta(minutes=bin_minutes)
    first = _floor(now - timedelta(hours=hours), bin_minutes) + step
    bins = [Bin(first + i * step, minutes=bin_minutes) for i in range(int(timedelta(hours=hours) / step))]
    # The minute in progress is not flushed yet (the tracking flush runs every minute).
    bins[-1].minutes = max(1.0, min(bin_minutes, (now - bins[-1].start).total_seconds() / 60 - 1))
    if org is None:
        table, where, params = SiteActivity._meta.db_table, "", []
    elif agent is None:
        table, where, params = OrganizationActivity._meta.db_table, "organization_id = {org} AND ", []
    else:
        table, where, params = AgentActivity._meta.db_table, "organization_id = {org} AND agent_id = %s AND ", [agent.pk]
    sums = ", ".join([f"sum({name})" for name in activity.COUNTERS] + [f"sum(latency_buckets[{i}])" for i in range(1, activity.BUCKETS + 1)])
    scope = db.untenanted("the site's activity names no organization") if org is None else db.tenant(org)
    with scope as sql:
        rows = sql.fetchall(
            f"SELECT floor(extract(epoch FROM start - %s) / %s)::int AS i, {sums} FROM {table}"
            f" WHERE {where}period = %s AND start >= %s GROUP BY 1",
            [first, step.total_seconds(), *params, Period.MINUTE, first],
        )
    for index, *values in rows:
        if 0 <= index < len(bins):
            target = bins[index]
            target.counts = {name: (float if name == "latency_ms_sum" else int)(v or 0) for name, v in zip(activity.COUNTERS, values)}
            target.buckets = [int(v or 0) for v in values[len(activity.COUNTERS):]]
    return bins


def _floor(moment: datetime, minutes: int) -> datetime:
    moment = moment.replace(second=0, microsecond=0)
    return moment - timedelta(minutes=moment.minute % minutes) if minutes < 60 else moment.replace(minute=0)


def totals(bins: list[Bin]) -> Bin:
    out = Bin(bins[0].start if bins else timezone.now())
    for b in bins:
        for name, value in b.counts.items():
            out.counts[name] += value
        for i, n in enumerate(b.buckets):
            out.buckets[i] += n
    return out


def busiest_organizations(*, hours: int = 24, limit: int = 10) -> list[tuple[int, int]]:
    """(organization id, searches) over the last `hours`, most first: an operator's view
    across tenants (each organization's range of OrganizationActivity's index)."""
    since = timezone.now() - timedelta(hours=hours)
    rows = (
        OrganizationActivity.unscoped.filter(period=Period.MINUTE, start__gte=since)
        .values("organization_id")
        .annotate(n=Sum("searches"))
        .order_by("-n")[:limit]
    )
    return [(r["organization_id"], r["n"]) for r in rows if r["n"]]
