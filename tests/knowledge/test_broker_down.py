"""The job row is the truth, the broker only a wake-up: a request that recorded its job
answers 202 whatever the broker does, and a lost wake-up is found by the workers' poller."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from django.conf import settings
from django_q.brokers.orm import ORM
from django_q.conf import Conf
from django_q.tasks import async_task

from core import job_poller, jobs
from knowledge.models import AgentStats, DeletionJob, Document, IngestionJob
from knowledge.services import ingestion_job_create
from tests.conftest import api_client
from tests.factories import SMALL_CHUNKS, AgentFactory, OrganizationFactory, fill_agent, make_api_key
from tests.knowledge.test_deletion_worker import _wait_for, _worker_env

AGENT = "/api/v1/agents/support"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def broker_down(monkeypatch):
    """Django-Q2 out of its inline test mode, its Redis broker at a port nobody listens on."""
    monkeypatch.setattr(Conf, "SYNC", False)
    monkeypatch.setattr(Conf, "ORM", None)
    monkeypatch.setattr(Conf, "REDIS", f"redis://127.0.0.1:{_closed_port()}/0")
    monkeypatch.setitem(jobs.metrics, "wake_failures", 0)


@pytest.mark.django_db(transaction=True)  # commits for real: the wake-up runs in the request
def test_requests_that_recorded_a_job_answer_202_with_the_broker_down(broker_down, monkeypatch):
    org = OrganizationFactory(slug="org-a")
    agent = AgentFactory(organization=org, slug="support")
    old = AgentFactory(organization=org, slug="old", config=SMALL_CHUNKS)
    fill_agent(org, old, documents=2, paragraphs=5)
    client = api_client(make_api_key(org))

    ingest = client.post(AGENT + "/documents/batch", {"documents": [{"key": "new", "text": "Queued words."}]}, format="json")
    assert ingest.status_code == 202, ingest.content
    deletion = client.delete("/api/v1/agents/old")
    assert deletion.status_code == 202, deletion.content
    assert jobs.metrics["wake_failures"] == 2  # both wake-ups lost, counted, logged once
    ingestion_job = IngestionJob.objects.for_org(org).get(pk=ingest.json()["id"])
    deletion_job = DeletionJob.objects.for_org(org).get(pk=deletion.json()["id"])
    assert ingestion_job.status == deletion_job.status == "pending"

    # The workers' poller: the broker still refuses a wake-up, so it runs the claim loop itself.
    assert job_poller.poll_once() == "ran"
    assert IngestionJob.objects.for_org(org).get(pk=ingestion_job.pk).status == "completed"
    assert DeletionJob.objects.for_org(org).get(pk=deletion_job.pk).status == "completed"
    assert Document.objects.for_org(org).get(agent=agent).key == "new"
    assert AgentStats.objects.for_org(org).get(agent=old).total_chunks == 0
    assert job_poller.poll_once() == "idle"


class _Broker:
    list_key = "lore"

    def __init__(self):
        self.queued = []

    def queue_size(self):
        return len(self.queued)

    def enqueue(self, task):
        self.queued.append(task)


@pytest.mark.django_db(transaction=True)
def test_once_the_broker_is_back_the_poller_wakes_the_workers_once(broker_down, monkeypatch):
    org = OrganizationFactory(slug="org-a")
    agent = AgentFactory(organization=org, slug="support")
    job = ingestion_job_create(org=org, agent=agent, docs=[])  # its wake-up lost
    assert jobs.metrics["wake_failures"] == 1
    broker = _Broker()
    monkeypatch.setattr("django_q.brokers.get_broker", lambda *args: broker)
    monkeypatch.setattr("django_q.tasks.get_broker", lambda *args: broker)
    assert job_poller.poll_once() == "woken"
    assert job_poller.poll_once() == "queued"  # one wake-up queued is enough
    assert len(broker.queued) == 1
    from knowledge import tasks

    tasks.run_jobs()  # what the woken worker runs
    assert IngestionJob.objects.for_org(org).get(pk=job.pk).status == "completed"
    broker.queued.clear()
    assert job_poller.poll_once() == "idle"


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_picks_up_a_job_whose_wake_up_was_lost(monkeypatch):
    """Measures the pickup after a lost wake-up: the worker's poller, every
    LORE_JOB_POLL_SECONDS, not the minutely schedule."""
    org = OrganizationFactory(slug="org-a")
    agent = AgentFactory(organization=org, slug="support")
    monkeypatch.setattr(jobs, "wake_on_commit", lambda: None)
    env = {**_worker_env(), "LORE_JOB_POLL_SECONDS": "0.5"}
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"], cwd=settings.BASE_DIR, env=env,
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def done(job):
        return IngestionJob.objects.for_org(org).get(pk=job.pk).status == "completed"

    try:
        # A first job, woken through the broker, shows the worker is up.
        first = ingestion_job_create(org=org, agent=agent, docs=[])
        async_task("knowledge.tasks.run_jobs", sync=False, broker=ORM(list_key=settings.Q_CLUSTER["name"]))
        _wait_for(lambda: done(first), 60)
        lost = ingestion_job_create(org=org, agent=agent, docs=[])  # nothing queued for it
        started = time.monotonic()
        _wait_for(lambda: done(lost), 30)
        print(f"lost wake-up picked up after {time.monotonic() - started:.2f} s")
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
