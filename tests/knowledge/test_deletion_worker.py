"""A real Django-Q2 worker (`manage.py qcluster`) SIGKILLed in the middle of a deletion."""

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone
from django_q.brokers.orm import ORM
from django_q.tasks import async_task

from knowledge.models import AgentStats, Chunk, DeletionJob
from knowledge.services import agent_delete_request, deletion_jobs_requeue_stale, stats_reconcile
from core import jobs
from tests.factories import SMALL_CHUNKS, AgentFactory, OrganizationFactory, fill_agent


def _worker_env() -> dict:
    db = connection.settings_dict
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.local",
        # The test database, through the same socket directory; no Redis: the ORM broker.
        "DATABASE_URL": f"postgres://{db['USER']}@/{db['NAME']}",
        "PGHOST": db["HOST"],
        "REDIS_URL": "",
        "LORE_WORKERS": "1",
        "LOG_LEVEL": "WARNING",
    }


def _wait_for(predicate, seconds: float):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.mark.django_db(transaction=True)
def test_sigkilled_worker_leaves_a_job_that_the_requeue_finishes_with_exact_counts(monkeypatch):
    org = OrganizationFactory()
    agent = AgentFactory(organization=org, config=SMALL_CHUNKS)
    fill_agent(org, agent, documents=20, paragraphs=30)
    total = Chunk.objects.for_org(org).filter(agent=agent).count()
    monkeypatch.setattr(jobs, "wake_on_commit", lambda: None)  # woken below, through the real worker's broker
    job = agent_delete_request(org=org, agent=agent)
    DeletionJob.objects.for_org(org).filter(pk=job.pk).update(batch_size=1)  # hundreds of batches
    monkeypatch.undo()

    worker = subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"], cwd=settings.BASE_DIR, env=_worker_env(),
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async_task("knowledge.tasks.run_jobs", sync=False, broker=ORM(list_key=settings.Q_CLUSTER["name"]))
        _wait_for(lambda: DeletionJob.objects.for_org(org).get(pk=job.pk).processed_items >= 20, 60)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)  # the cluster and its worker processes
        worker.wait(10)

    dead = DeletionJob.objects.for_org(org).get(pk=job.pk)
    state = (dead.status, dead.processed_items, total, dead.last_error)
    assert dead.status == "processing" and 20 <= dead.processed_items < total, state
    remaining = Chunk.objects.for_org(org).filter(agent=agent).count()
    assert AgentStats.objects.for_org(org).get(agent=agent).total_chunks == remaining == total - dead.processed_items
    assert not [row for row in stats_reconcile(org=org) if row.drift]

    # Runs the requeued job here (tests run Django-Q2 tasks inline). The killed worker's
    # backend holds the job's row lock until PostgreSQL sees its client gone; the requeue
    # skips a locked row (alive, as far as it can tell) and requeues nothing until then.
    later = timezone.now() + timedelta(seconds=settings.LORE_JOB_STALE_SECONDS + 1)
    assert _wait_for(lambda: deletion_jobs_requeue_stale(now=later), 10) == [job.pk]
    done = DeletionJob.objects.for_org(org).get(pk=job.pk)
    assert (done.status, done.attempts, done.processed_items) == ("completed", 2, total)
    assert AgentStats.objects.for_org(org).get(agent=agent).total_chunks == 0
    assert not Chunk.objects.for_org(org).filter(agent=agent).exists()


@pytest.mark.django_db(transaction=True)
def test_agent_deletion_drops_the_agents_partial_search_index_first(settings):
    from search import indexes

    settings.SEARCH_AGENT_INDEX_MIN_CHUNKS = 10
    org = OrganizationFactory()
    agent = AgentFactory(organization=org, config=SMALL_CHUNKS)
    fill_agent(org, agent, documents=2, paragraphs=10)
    assert indexes.sync_indexes().created_agents == [agent.pk]
    dropped = []
    original = indexes.drop_agent_index

    def drop(agent_id):
        dropped.append((agent_id, Chunk.objects.for_org(org).filter(agent=agent).count()))
        return original(agent_id)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(indexes, "drop_agent_index", drop)
        agent_delete_request(org=org, agent=agent)  # runs the job once committed (tests run tasks inline)
    assert dropped == [(agent.pk, 20)]  # before any chunk went
    assert indexes.existing() == {}
    assert indexes.graphs() == []  # its keyword index too
    assert DeletionJob.objects.for_org(org).get().status == "completed"


def test_the_chunk_tables_autovacuum_is_throttled_for_the_graph_repairs(db):
    # knowledge.0004: the vacuum after a large deletion repairs HNSW graphs, which must not
    # crowd out other tenants' requests (bench/delete.py).
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT reloptions FROM pg_class WHERE oid = 'knowledge_chunk'::regclass")
        assert "autovacuum_vacuum_cost_delay=40" in cursor.fetchone()[0]
