"""Background jobs: the job row is the truth, the broker only a wake-up.

A request records its job (a row, `pending`) in its transaction and, once committed, wakes
the workers (`wake`: one Django-Q2 task, `RUN_TASK`). `wake` never raises: with the broker
down the request still answers with its job, and the wake-up is lost, not the job. Workers
run a claim loop (knowledge.services.jobs.jobs_run): claim the next job fairly from the job
tables, run it for a time slice, claim the next, until nothing is runnable. A lost wake-up is
found by the poller thread every Django-Q2 worker process runs (core.job_poller), within
LORE_JOB_POLL_SECONDS: Django-Q2 schedules run at most once a minute (its guard calls the
scheduler every 30 s), so they are only the safety net.

Fairness: claims go round-robin over the organizations that have runnable jobs (the one
served longest ago first, by TURN_TABLE), and an organization never has more than
LORE_JOBS_PER_ORG_IN_FLIGHT jobs processing: one tenant's backlog occupies at most that many
workers, whatever the broker's FIFO holds.

Tables are named, not imported: core imports no app. The statements here are maintenance
across organizations (which tenant runs next), by table name, clearly cross-tenant.
"""

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.utils import timezone

from core import db, limits
from core import metrics as lore_metrics

logger = logging.getLogger(__name__)

PENDING, PROCESSING, COMPLETED, FAILED = "pending", "processing", "completed", "failed"
UNFINISHED = (PENDING, PROCESSING)

# Every job table the claim loop serves, and the table of organizations' turns.
JOB_TABLES = ("knowledge_ingestionjob", "knowledge_deletionjob", "knowledge_exportjob")
TURN_TABLE = "knowledge_jobturn"
RUN_TASK = "knowledge.tasks.run_jobs"

# Wake-ups since the process started, for logs and tests.
metrics = {"wakes": 0, "wake_failures": 0}
_broker_failing = threading.Event()


class JobFields(models.Model):
    """What every job row has besides its status (whose choices differ by kind)."""

    # Runs that claimed the job (a slice each); the run holding the job is the one whose
    # attempt number matches, so a run presumed dead stops at its next step.
    attempts = models.IntegerField(default=0)
    # Runs in a row that ended without progress (worker lost, dependency unavailable);
    # reset by progress. Over LORE_JOB_MAX_RETRIES the job fails.
    retries = models.IntegerField(default=0)
    # Not claimed before this time (backoff after a dependency was unavailable).
    not_before = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    # Fields a job ends with besides status and times (ingestion drops its payload).
    FINISHED_FIELDS: dict = {}

    class Meta:
        abstract = True


# --- Outcomes: the ends decided here, told to the apps (their audit events) --------------

FAILED_OUTCOME, REQUEUED_OUTCOME = "failed", "requeued"
WORKER, SWEEPER = "worker", "sweeper"
_outcome_callbacks: list[Callable] = []


def on_outcome(callback: Callable) -> None:
    """Registers `callback(model, job_id, organization_id, outcome, reason, by="")`, called
    for each job this module fails (retries exhausted, worker lost too often: "failed") or
    puts back to pending (stale: "requeued"), inside the transaction of that status change:
    what it writes commits or rolls back with it. `by`: who decided: WORKER (a run's
    retries exhausted), SWEEPER (stale jobs), or the name of the command that asked. Apps register from their AppConfig.ready (knowledge: the audit
    events; core imports no app)."""
    if callback not in _outcome_callbacks:
        _outcome_callbacks.append(callback)


def _told(model, job_id: int, organization_id: int, outcome: str, reason: str, by: str) -> None:
    for callback in _outcome_callbacks:
        callback(model, job_id, organization_id, outcome, reason, by=by)


# --- Waking ----------------------------------------------------------------------------


def wake(func: str = RUN_TASK, *args) -> bool:
    """Enqueues a task; never raises. False when the broker refused it: the caller's job is
    recorded anyway and the workers' poller finds it. Logged once per outage."""
    from django_q.tasks import async_task

    try:
        async_task(func, *args)
    except Exception as exc:  # the broker's own errors (redis.ConnectionError, OperationalError, ...)
        metrics["wake_failures"] += 1
        lore_metrics.job_wake_failed()
        if not _broker_failing.is_set():
            _broker_failing.set()
            logger.warning("task broker unavailable, %s not queued (the job is recorded; workers poll): %r", func, exc)
        return False
    metrics["wakes"] += 1
    if _broker_failing.is_set():
        _broker_failing.clear()
        logger.warning("task broker available again")
    return True


def wake_on_commit() -> None:
    """One wake-up once the current transaction commits (at once outside one)."""
    transaction.on_commit(wake)


# --- Claiming --------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    table: str
    job_id: int
    organization_id: int
    attempt: int


def _due() -> str:
    """Pending and past its backoff."""
    return "status = 'pending' AND (not_before IS NULL OR not_before <= %(now)s)"


# Organizations with a due pending job and fewer than `cap` jobs processing, the one served
# longest ago first (never served: first), then the one with the oldest due job. Reads the
# partial indexes *_unfinished_idx (organization, status, created_at) WHERE status is pending
# or processing: a few rows per organization (quota-bounded) whatever the job history.
_CANDIDATES = (
    "WITH runnable AS ("
    + " UNION ALL ".join(f"SELECT organization_id, created_at FROM {t} WHERE {_due()}" for t in JOB_TABLES)
    + "), busy AS (SELECT organization_id, count(*) AS n FROM ("
    + " UNION ALL ".join(f"SELECT organization_id FROM {t} WHERE status = 'processing'" for t in JOB_TABLES)
    + f") b GROUP BY organization_id) SELECT r.organization_id FROM runnable r"
    f" LEFT JOIN busy ON busy.organization_id = r.organization_id"
    f" LEFT JOIN {TURN_TABLE} turn ON turn.organization_id = r.organization_id"
    " WHERE coalesce(busy.n, 0) < %(cap)s"
    " GROUP BY r.organization_id, turn.last_claimed_at"
    " ORDER BY turn.last_claimed_at NULLS FIRST, min(r.created_at), r.organization_id LIMIT %(limit)s"
)


def runnable_organizations(*, now=None, limit: int = 20) -> list[int]:
    with db.unscoped("fair claims: which organizations have work, across all of them") as sql:
        rows = sql.fetchall(
            _CANDIDATES, {"now": now or timezone.now(), "cap": settings.LORE_JOBS_PER_ORG_IN_FLIGHT, "limit": limit}
        )
    return [row[0] for row in rows]


def claim_next(*, now=None) -> Claim | None:
    """pending -> processing for the next job in fair order; None when nothing is runnable."""
    now = now or timezone.now()
    for org_id in runnable_organizations(now=now):
        try:
            claim = _claim_in_organization(org_id, now)
        except IntegrityError:
            continue  # the organization was deleted meanwhile (its turn row cannot be made)
        if claim is not None:
            return claim
    return None


def _claim_in_organization(org_id: int, now) -> Claim | None:
    cap = settings.LORE_JOBS_PER_ORG_IN_FLIGHT
    with db.tenant(org_id) as sql, sql.cursor() as cursor:
        # The organization's turn row serializes its claims: a second claimer skips the
        # organization rather than wait, and the in-flight count below, read after the lock,
        # includes every claim committed before it; so the cap holds under concurrent claims.
        cursor.execute(
            f"INSERT INTO {TURN_TABLE} (organization_id, last_claimed_at) VALUES ({{org}}, NULL) ON CONFLICT DO NOTHING"
        )
        cursor.execute(f"SELECT 1 FROM {TURN_TABLE} WHERE organization_id = {{org}} FOR UPDATE SKIP LOCKED")
        if cursor.fetchone() is None:
            return None
        # *_unfinished_idx (organization, status, created_at) on both tables.
        cursor.execute(
            "SELECT " + " + ".join(
                f"(SELECT count(*) FROM {t} WHERE organization_id = {{org}} AND status = 'processing')"
                for t in JOB_TABLES
            ),
        )  # fmt: skip
        if cursor.fetchone()[0] >= cap:
            return None
        # Within an organization, its oldest due job first, whichever its kind.
        cursor.execute(
            "SELECT tbl FROM ("
            + " UNION ALL ".join(
                f"SELECT '{t}' AS tbl, min(created_at) AS oldest FROM {t} WHERE organization_id = {{org}} AND {_due()}"
                for t in JOB_TABLES
            )
            + ") x WHERE oldest IS NOT NULL ORDER BY oldest",
            {"now": now},
        )
        for (table,) in cursor.fetchall():
            # SKIP LOCKED: a pending row locked now is being cancelled or retried; take the next.
            cursor.execute(
                f"UPDATE {table} SET status = 'processing', attempts = attempts + 1, heartbeat_at = %(now)s,"
                f" started_at = coalesce(started_at, %(now)s) WHERE id = (SELECT id FROM {table}"
                f" WHERE organization_id = {{org}} AND {_due()} ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)"
                " RETURNING id, attempts",
                {"now": now},
            )
            row = cursor.fetchone()
            if row is not None:
                cursor.execute(f"UPDATE {TURN_TABLE} SET last_claimed_at = %s WHERE organization_id = {{org}}", [now])
                return Claim(table, row[0], org_id, row[1])
    return None


def claim(model, *, job) -> int | None:
    """pending -> processing for this job, outside the fair order (an operator's or a test's
    explicit run); returns the attempt number the run holds, None if it was not pending."""
    now = timezone.now()
    with db.tenant(job.organization_id) as sql:
        row = sql.fetchone(
            f"UPDATE {model._meta.db_table} SET status = %s, attempts = attempts + 1, heartbeat_at = %s,"
            " started_at = coalesce(started_at, %s) WHERE id = %s AND organization_id = {org} AND status = %s"
            " RETURNING attempts",
            [PROCESSING, now, now, job.pk, PENDING],
        )
    return row[0] if row else None


# --- Running: each step is conditional on the run still holding the job ----------------


def _mine(model, job, attempt: int):
    return model.objects.for_org(job.organization).filter(pk=job.pk, status=PROCESSING, attempts=attempt)


def heartbeat(model, *, job, attempt: int, **progress) -> bool:
    """Records progress; False when the job is no longer this run's (requeued as stale and
    claimed again, cancelled): the run must stop."""
    return bool(_mine(model, job, attempt).update(heartbeat_at=timezone.now(), retries=0, **progress))


def hand_back(model, *, job, attempt: int) -> bool:
    """processing -> pending at the end of a time slice; the claim loop takes it up again."""
    return bool(_mine(model, job, attempt).update(status=PENDING, heartbeat_at=timezone.now()))


def finish(model, *, job, attempt: int, status: str, **fields) -> bool:
    """The end, however it ends: with the model's FINISHED_FIELDS (ingestion drops its payload)."""
    now = timezone.now()
    ended = {"status": status, "finished_at": now, "heartbeat_at": now, **model.FINISHED_FIELDS, **fields}
    return bool(_mine(model, job, attempt).update(**ended))


def backoff_seconds(retries: int, *, at_least: float = 0) -> float:
    """Exponential in the retries so far, capped; at least what the dependency asked for."""
    base = settings.LORE_JOB_RETRY_BASE_SECONDS * 2 ** max(0, retries - 1)
    return max(at_least, min(settings.LORE_JOB_RETRY_MAX_SECONDS, base))


def retry_later(model, *, job, attempt: int, error: str, retry_after: float = 0, **failed_fields) -> bool:
    """A dependency is unavailable: back to pending, not claimed before the backoff is
    over; failed (with `failed_fields`) after LORE_JOB_MAX_RETRIES runs in a row without
    progress. True when it will run again. `job` as loaded for this run."""
    retries = job.retries + 1
    if retries > settings.LORE_JOB_MAX_RETRIES:
        # The end and what the apps record of it (on_outcome) commit together.
        with db.tenant(job.organization_id):
            if finish(model, job=job, attempt=attempt, status=FAILED, **failed_fields):
                reason = f"{error}: {retries - 1} retries without progress"
                _told(model, job.pk, job.organization_id, FAILED_OUTCOME, reason, WORKER)
        return False
    not_before = timezone.now() + timedelta(seconds=backoff_seconds(retries, at_least=retry_after or 0))
    logger.info("job %s.%s: %s; retry %s at %s", model._meta.db_table, job.pk, error, retries, not_before)
    waiting = {"status": PENDING, "retries": retries, "not_before": not_before, "heartbeat_at": timezone.now()}
    return bool(_mine(model, job, attempt).update(**waiting))


# --- Stale jobs ------------------------------------------------------------------------


def stuck(model, *, org=None, now=None):
    """Jobs no worker is running: `processing` with a heartbeat older than
    LORE_JOB_STALE_SECONDS (the worker died), or due and `pending` for as long (no worker
    took it). Across organizations unless one is given: for the sweeper, commands and the
    admin."""
    now = now or timezone.now()
    threshold = now - timedelta(seconds=settings.LORE_JOB_STALE_SECONDS)
    # *_unfinished_idx: only unfinished rows, few.
    jobs = model.unscoped.filter(status__in=UNFINISHED, heartbeat_at__lt=threshold).exclude(
        status=PENDING, not_before__gt=now
    )
    return jobs.filter(organization=org) if org is not None else jobs


def requeue_stale(model, *, org=None, now=None, failed_fields: dict, by: str = SWEEPER) -> list[int]:
    """Puts stuck jobs back to pending (the next run resumes from what the last committed);
    a job whose worker was lost more than LORE_JOB_MAX_RETRIES times in a row fails
    instead. A worker that was only slow finds the job no longer its own at its next step.
    Each job's outcome is told to on_outcome's callbacks in this transaction (`by`: the
    command that asked, else SWEEPER)."""
    requeued, failed = [], []
    with transaction.atomic():
        # SKIP LOCKED: a job row locked now belongs to a step in flight, so it is alive.
        rows = stuck(model, org=org, now=now).select_for_update(skip_locked=True).order_by("pk")
        for pk, org_id, status, retries in rows.values_list("pk", "organization_id", "status", "retries"):
            lost = status == PROCESSING
            mine = model.unscoped.filter(pk=pk)
            if lost and retries + 1 > settings.LORE_JOB_MAX_RETRIES:
                t = timezone.now()
                mine.update(status=FAILED, finished_at=t, heartbeat_at=t, **model.FINISHED_FIELDS, **failed_fields)
                _told(model, pk, org_id, FAILED_OUTCOME, f"worker lost {retries + 1} times in a row", by)
                failed.append(pk)
                continue
            mine.update(status=PENDING, heartbeat_at=timezone.now(), retries=retries + int(lost))
            _told(model, pk, org_id, REQUEUED_OUTCOME, "worker lost" if lost else "pending, not taken by any worker", by)
            requeued.append(pk)
        if requeued:
            wake_on_commit()
    if requeued or failed:
        logger.warning("%s: requeued stuck jobs %s, failed %s", model._meta.db_table, requeued, failed)
    return requeued


# --- Queue state (read when /metrics is scraped) -------------------------------------------


def queue_state(*, now=None) -> dict[str, dict[str, float]]:
    """Per kind ("ingestion", "deletion"): jobs queued (pending) and running (processing),
    across organizations, and the seconds the runnable queued job that has waited longest
    has waited (since it was queued, handed back or its backoff ended; 0: none). Reads the
    partial indexes *_unfinished_idx: only unfinished rows."""
    now = now or timezone.now()
    since = "greatest(coalesce(heartbeat_at, created_at), coalesce(not_before, created_at))"
    sql = " UNION ALL ".join(
        f"SELECT '{t}', count(*) FILTER (WHERE status = %(pending)s), count(*) FILTER (WHERE status = %(processing)s),"
        f" coalesce(extract(epoch FROM %(now)s - min({since}) FILTER (WHERE status = %(pending)s"
        f" AND (not_before IS NULL OR not_before <= %(now)s))), 0)"
        f" FROM {t} WHERE status IN (%(pending)s, %(processing)s)"
        for t in JOB_TABLES
    )
    with db.unscoped("the job queues of every organization, for /metrics") as scoped:
        rows = scoped.fetchall(sql, {"pending": PENDING, "processing": PROCESSING, "now": now})
    kinds = {}
    for table, queued, running, oldest in rows:
        kinds[table.removeprefix("knowledge_").removesuffix("job")] = {
            "queued": queued, "running": running, "oldest": max(0.0, float(oldest)),
        }  # fmt: skip
    return kinds


# --- Quota -----------------------------------------------------------------------------


def unfinished_jobs(*, org, up_to: int) -> int:
    """The organization's pending or processing jobs, counted up to `up_to`: the cost is
    bounded by the quota, whatever the backlog. *_unfinished_idx."""
    with db.tenant(org) as sql:
        row = sql.fetchone(
            "SELECT " + " + ".join(
                f"(SELECT count(*) FROM (SELECT 1 FROM {t} WHERE organization_id = {{org}}"
                " AND status IN ('pending', 'processing') LIMIT %(limit)s) x)"
                for t in JOB_TABLES
            ),
            {"limit": up_to},
        )  # fmt: skip
    return min(up_to, row[0])


def quota_check_jobs(*, org) -> None:
    """Refuses a new job (403 quota_exceeded) when the organization has as many unfinished
    jobs as it may queue (limits.quota: `org.max_jobs` or LORE_MAX_QUEUED_JOBS). Call it
    inside the transaction that creates the job: the organization row stays locked until it
    commits, so concurrent requests count one after the other and the limit is exact. The
    lock is FOR NO KEY UPDATE: inserts that reference the organization (their foreign-key
    checks take FOR KEY SHARE) do not wait for it."""
    limit = limits.quota(org, "jobs")
    if not limit:
        return
    with db.tenant(org) as sql:
        sql.execute("SELECT 1 FROM tenants_organization WHERE id = {org} FOR NO KEY UPDATE")
    limits.quota_check(org, usage={"jobs": unfinished_jobs(org=org, up_to=limit)}, adding={"jobs": 1})
