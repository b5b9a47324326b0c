"""What the console reads that no app's selectors already give: health, totals, job lists.
Operators see every tenant, so these read through the unscoped managers; none of them
counts the chunk or document tables (estimated counts come from pg_class.reltuples)."""

import time
from datetime import timedelta

from django.conf import settings
from django.db.models import Q, Sum
from django.utils import timezone

from core import db
from knowledge.models import AgentStats, DeletionJob, IngestionJob
from search import caching, indexes
from tenants.models import Organization, OrganizationUsage

# A job shown among the running ones stays this long after it finished, so its bar is seen reaching its end.
RECENT_JOB_MINUTES = 15
RECENT_JOBS_READ = 100


def estimated_rows(*, table: str) -> int:
    """The planner's row estimate (as of the last ANALYZE/autovacuum): never a scan."""
    with db.untenanted("the catalog's estimate") as sql:
        row = sql.fetchone("SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = to_regclass(%s)", [table])
    return int(row[0]) if row else 0


def totals() -> dict:
    """Organizations and agents counted (small tables); documents, chunks and bytes from the
    usage rows (one per organization, exact); storage from the relations' sizes."""
    usage = OrganizationUsage.unscoped.aggregate(documents=Sum("documents"), chunks=Sum("chunks"), bytes=Sum("bytes"))
    with db.untenanted("the catalog's relation sizes") as sql:
        storage = int(sql.fetchone(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relkind = 'r'"
        )[0])  # fmt: skip
    return {
        "organizations": Organization.objects.count(),
        "agents": AgentStats.unscoped.exclude(agent__status="deleted").count(),
        "documents": usage["documents"] or 0,
        "chunks": usage["chunks"] or 0,
        "text_bytes": usage["bytes"] or 0,
        "storage_bytes": storage,
        "chunks_estimated": estimated_rows(table="knowledge_chunk"),
    }


def health() -> list[dict]:
    """(name, ok, detail) of each part Lore runs on."""
    return [_database(), _redis(), _workers(), _queue(), _index_sync()]


def _check(name: str, ok: bool | None, detail: str) -> dict:
    return {"name": name, "ok": ok, "detail": detail}


def _database() -> dict:
    started = time.perf_counter()
    try:
        with db.untenanted("the server's version") as sql:
            version = sql.fetchone("SELECT version()")[0].split(" on ")[0]
    except Exception as exc:  # noqa: BLE001 - shown, not raised
        return _check("Database", False, exc.__class__.__name__)
    return _check("Database", True, f"{version}, answered in {(time.perf_counter() - started) * 1000:.1f} ms")


def _redis() -> dict:
    if not caching.uses_redis():
        return _check("Redis", None, "not configured: in-process cache, ORM broker")
    try:
        started = time.perf_counter()
        caching._redis_client().ping()
    except Exception as exc:  # noqa: BLE001
        return _check("Redis", False, exc.__class__.__name__)
    return _check("Redis", True, f"ping {(time.perf_counter() - started) * 1000:.1f} ms")


def _workers() -> dict:
    """Django-Q2 clusters report themselves through the broker every few seconds (seen only
    where the broker is shared: Redis); the last task a worker finished says it is alive
    either way."""
    from django_q.models import Task
    from django_q.status import Stat

    try:
        clusters = Stat.get_all()
    except Exception:  # noqa: BLE001
        clusters = []
    last = Task.objects.order_by("-stopped").values_list("stopped", flat=True).first()
    workers = sum(len(c.workers) for c in clusters)
    beat = f"last task finished {_ago(last)}" if last else "no task finished yet"
    if clusters:
        newest = max(c.timestamp for c in clusters)
        return _check("Workers", True, f"{len(clusters)} cluster(s), {workers} worker(s), heartbeat {_ago(newest)}; {beat}")
    fresh = last is not None and timezone.now() - last < timedelta(minutes=3)
    return _check("Workers", fresh or None, f"no cluster heartbeat visible here; {beat}")


def _queue() -> dict:
    pending = Q(status__in=["pending", "processing"])
    counts, oldest = {}, None
    for label, model in (("ingestion", IngestionJob), ("deletion", DeletionJob)):
        # Partial indexes ingestjob_unfinished_idx / deljob_unfinished_idx: unfinished jobs only.
        rows = model.unscoped.filter(pending).values_list("created_at", flat=True)
        counts[label] = rows.count()
        first = rows.order_by("created_at").first()
        oldest = first if oldest is None or (first and first < oldest) else oldest
    try:
        from django_q.brokers import get_broker

        broker = get_broker().queue_size()
    except Exception:  # noqa: BLE001
        broker = None
    detail = f"{counts['ingestion']} ingestion and {counts['deletion']} deletion job(s) unfinished"
    detail += f", oldest queued {_ago(oldest)}" if oldest else ""
    detail += f"; broker queue {broker}" if broker is not None else ""
    stale = oldest is not None and timezone.now() - oldest > timedelta(minutes=10)
    return {**_check("Queue", not stale, detail), "jobs": sum(counts.values()), "oldest": oldest}


def _index_sync() -> dict:
    """Graphs and keyword indexes the sync would build or drop now (its lag), and those
    being built (not yet valid)."""
    try:
        plan = indexes.sync_plan()
    except Exception as exc:  # noqa: BLE001
        return _check("Index sync", False, exc.__class__.__name__)
    from django_q.models import Task

    last = Task.objects.filter(func="search.tasks.sync_indexes").order_by("-stopped").values_list("stopped", flat=True).first()
    detail = f"{plan['to_build']} to build, {plan['to_drop']} to drop, {plan['building']} building, {plan['built']} in place"
    detail += f"; last sync {_ago(last)}" if last else "; no sync run recorded"
    return _check("Index sync", plan["to_build"] + plan["to_drop"] == 0 or None, detail)


def _ago(moment) -> str:
    if moment is None:
        return "never"
    seconds = max(0, (timezone.now() - moment).total_seconds())
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def job_rows(*, org: Organization | None = None, agent_id: int | None = None, limit: int = 20) -> list[dict]:
    """Unfinished jobs and those finished in the last RECENT_JOB_MINUTES, newest first, with
    their progress. Bounded reads, whatever the job tables hold: the unfinished ones through
    the partial indexes, the finished ones among the latest RECENT_JOBS_READ by id."""
    since = timezone.now() - timedelta(minutes=RECENT_JOB_MINUTES)
    out = []
    for kind, model in (("ingestion", IngestionJob), ("deletion", DeletionJob)):
        rows = model.unscoped.select_related("organization", "agent")
        if kind == "ingestion":
            rows = rows.defer("payload")  # the documents' text, until the job ends
        if org is not None:
            rows = rows.filter(organization_id=org.pk)
        if agent_id is not None:
            rows = rows.filter(agent_id=agent_id)
        jobs = {job.pk: job for job in rows.filter(status__in=["pending", "processing"]).order_by("-pk")[:limit]}
        for job in rows.order_by("-pk")[:RECENT_JOBS_READ]:
            if job.finished_at is not None and job.finished_at >= since:
                jobs.setdefault(job.pk, job)
        out += [_job_row(kind, job) for job in jobs.values()]
    return sorted(out, key=lambda r: r["created_at"], reverse=True)[:limit]


def recent_jobs(*, org: Organization, limit: int = 20) -> list[dict]:
    out = []
    for kind, model in (("ingestion", IngestionJob), ("deletion", DeletionJob)):
        # Indexes ingestjob_org_status_idx / deljob_org_status_idx lead with the organization.
        rows = model.objects.for_org(org).select_related("organization", "agent").order_by("-created_at")
        rows = (rows.defer("payload") if kind == "ingestion" else rows)[:limit]
        out += [_job_row(kind, job) for job in rows]
    return sorted(out, key=lambda r: r["created_at"], reverse=True)[:limit]


def _job_row(kind: str, job) -> dict:
    if kind == "ingestion":
        done, total = job.processed_documents, job.total_documents
        progress = 100 if job.status == "completed" else int(100 * done / total) if total else 0
        what = f"{done} / {total} documents, {job.processed_chunks} / {job.total_chunks} chunks"
    else:
        progress, what = job.progress, f"{job.processed_items:,} / {job.total_items:,} {job.scope} items"
    return {
        "kind": kind, "id": job.pk, "status": job.status, "progress": progress, "detail": what,
        "organization": job.organization.slug, "agent": job.agent.slug if job.agent_id else "",
        "created_at": job.created_at, "finished": job.status not in ("pending", "processing"),
        "error": getattr(job, "last_error", "") or "",
    }  # fmt: skip


def job_json(row: dict) -> dict:
    return {**row, "created_at": row["created_at"].isoformat()}


def busiest_agents(*, org: Organization | None = None, limit: int = 10) -> list[AgentStats]:
    """By searches since each agent was created (their stats rows: one per agent)."""
    rows = AgentStats.unscoped if org is None else AgentStats.objects.for_org(org)
    return list(
        rows.select_related("agent", "agent__organization").filter(search_count__gt=0).order_by("-search_count")[:limit]
    )


def cache_backend() -> str:
    return settings.CACHES["default"]["BACKEND"].rsplit(".", 1)[-1] + (" (shared)" if caching.uses_redis() else "")



def estimated_count(queryset) -> int:
    """The planner's estimate of a queryset's rows (EXPLAIN, nothing scanned): what the
    admin's paginator shows for tables too large to COUNT on every page."""
    sql, params = queryset.query.sql_with_params()
    with db.unscoped("the admin's estimated counts, across organizations") as scoped:
        plan = scoped.fetchone(f"EXPLAIN (FORMAT JSON) {sql}", params)[0]
    if isinstance(plan, str):
        import json

        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])
