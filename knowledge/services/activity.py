"""Writing the activity history (knowledge/activity.py counts it in memory): the bulk write
the tracking flush calls, and the rollup of old minutes into hours (old hours go with the
retention task)."""

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core import db
from knowledge import activity
from knowledge.activity_models import Period
from tenants.models import Organization

_TABLES = {
    activity.AGENT: ("knowledge_agentactivity", ["organization_id", "agent_id"]),
    activity.ORG: ("knowledge_organizationactivity", ["organization_id"]),
    activity.SITE: ("knowledge_siteactivity", []),
}
# Rows of a deleted agent or organization are not written: a flush racing a deletion must
# not bring rows back (nor fail on the foreign key).
_LIVE = {
    activity.AGENT: " JOIN knowledge_agent ag ON ag.id = x.agent_id AND ag.organization_id = x.organization_id"
    " AND ag.status = 'active'",
    activity.ORG: " JOIN tenants_organization og ON og.id = x.organization_id",
    activity.SITE: "",
}
_SUMS = ", ".join(f"{c} = t.{c} + EXCLUDED.{c}" for c in activity.COUNTERS)
_ADD_BUCKETS = "latency_buckets = ARRAY(SELECT coalesce(a, 0) + coalesce(b, 0) FROM unnest(t.latency_buckets, EXCLUDED.latency_buckets) AS u(a, b))"


def activity_write(rows: dict[tuple, list]) -> int:
    """Adds drained activity rows ((kind, org, agent, minute) -> values) to the minute rows:
    one INSERT ... ON CONFLICT DO UPDATE per table, inside the caller's transaction."""
    by_kind: dict[str, list] = {kind: [] for kind in _TABLES}
    for (kind, org, agent, minute), values in rows.items():
        by_kind[kind].append((org, agent, minute, values))
    with db.unscoped("tracking flush: every organization's activity rows") as sql, sql.cursor() as cursor:
        for kind, items in by_kind.items():
            if not items:
                continue
            table, owners = _TABLES[kind]
            # One type per array (rows drained in process hold ints and floats, rows read back from Redis floats).
            counters = [
                [(float if name == "latency_ms_sum" else int)(row[3][i]) for row in items] for i, name in enumerate(activity.COUNTERS)
            ]
            buckets = ["{" + ",".join(str(int(v)) for v in row[3][len(activity.COUNTERS):]) + "}" for row in items]
            columns = [*owners, "period", "start", *activity.COUNTERS, "latency_buckets"]
            selected = [f"x.{c}" for c in owners] + ["60", "to_timestamp(x.minute)"]
            selected += [f"x.{c}" for c in activity.COUNTERS] + ["x.latency_buckets::bigint[]"]
            types = ["float8" if c == "latency_ms_sum" else "bigint" for c in activity.COUNTERS]
            unnest = ", ".join(["%s::bigint[]"] * (len(owners) + 1) + [f"%s::{t}[]" for t in types] + ["%s::text[]"])
            aliases = ", ".join([*owners, "minute", *activity.COUNTERS, "latency_buckets"])
            owner_values = [[row[0] for row in items], [row[1] for row in items]][: len(owners)]
            cursor.execute(
                f"INSERT INTO {table} AS t ({', '.join(columns)}) SELECT {', '.join(selected)}"
                f" FROM unnest({unnest}) AS x({aliases}){_LIVE[kind]}"
                f" ON CONFLICT ({', '.join([*owners, 'period', 'start'])}) DO UPDATE SET {_SUMS}, {_ADD_BUCKETS}",
                [*owner_values, [row[2] for row in items], *counters, buckets],
            )
    return len(rows)


def _rollup_sql(table: str, owners: list[str], where: str) -> str:
    """Moves the minute rows `where` selects into their hours: one statement (deleted and
    summed in one go, so nothing is counted twice or lost)."""
    keys = ", ".join(owners + ["date_trunc('hour', start)"])
    group = ", ".join(str(i) for i in range(1, len(owners) + 2))
    sums = ", ".join(f"sum({c}) AS {c}" for c in activity.COUNTERS)
    return (
        f"WITH gone AS (DELETE FROM {table} WHERE {where} RETURNING *),"
        f" b AS (SELECT {keys} AS h, i, sum(v) AS s FROM gone, unnest(latency_buckets) WITH ORDINALITY AS u(v, i)"
        f" GROUP BY {group}, i),"
        f" ba AS (SELECT {', '.join(owners + ['h'])}, array_agg(s ORDER BY i)::bigint[] AS buckets FROM b GROUP BY {group}),"
        f" totals AS (SELECT {keys} AS h, {sums} FROM gone GROUP BY {group})"
        f" INSERT INTO {table} AS t ({', '.join([*owners, 'period', 'start', *activity.COUNTERS, 'latency_buckets'])})"
        f" SELECT {', '.join([*(f'totals.{c}' for c in owners), str(int(Period.HOUR)), 'totals.h'])}, "
        + ", ".join(f"totals.{c}" for c in activity.COUNTERS)
        + ", coalesce(ba.buckets, '{}')"
        f" FROM totals LEFT JOIN ba USING ({', '.join(owners + ['h'])})"
        f" ON CONFLICT ({', '.join([*owners, 'period', 'start'])}) DO UPDATE SET {_SUMS}, {_ADD_BUCKETS}"
    )


def activity_rollup(*, now=None) -> dict[str, int]:
    """Minutes older than LORE_ACTIVITY_MINUTE_DAYS become hours. Organization by
    organization (each a transaction; its index ranges on (organization, period, start)),
    then the site's rows. Hours older than LORE_ACTIVITY_RETENTION_DAYS are removed by the
    retention task (knowledge.apps registers them: tenants/retention.py)."""
    now = now or timezone.now()
    minutes_before = (now - timedelta(days=settings.LORE_ACTIVITY_MINUTE_DAYS)).replace(minute=0, second=0, microsecond=0)
    done = {"organizations": 0}
    # Every organization: the rollup serves all tenants (maintenance), like the index sync.
    for org_id in Organization.objects.values_list("pk", flat=True).order_by("pk"):
        with db.tenant(org_id) as sql, sql.cursor() as cursor:
            for kind in (activity.AGENT, activity.ORG):
                table, owners = _TABLES[kind]
                cursor.execute(_rollup_sql(table, owners, "organization_id = {org} AND period = 60 AND start < %s"), [minutes_before])
        done["organizations"] += 1
    with transaction.atomic(), db.untenanted("the site's activity names no organization") as sql, sql.cursor() as cursor:
        table, owners = _TABLES[activity.SITE]
        cursor.execute(_rollup_sql(table, owners, "period = 60 AND start < %s"), [minutes_before])
    return done
