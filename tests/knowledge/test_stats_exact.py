import random
import threading
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection

from knowledge.models import AgentStats
from knowledge.services import DocumentInput, documents_delete, documents_ingest, stats_reconcile, usage_reconcile
from tenants.models import OrganizationUsage
from tests.factories import AgentFactory, OrganizationFactory


def _doc(key, version):
    body = "\n\n".join(f"## Part {i}\n\n" + f"v{version} sentence {i}. " * (10 + version % 7) for i in range(1 + version % 4))
    return DocumentInput(key=key, text=f"# {key}\n\n{body}")


@pytest.mark.django_db(transaction=True)
def test_stats_stay_exact_under_concurrent_ingest_reingest_and_delete():
    org = OrganizationFactory()
    agent = AgentFactory(organization=org, config={"chunk_size": 200, "chunk_overlap": 20, "parent_chunk_size": 600})
    keys = [f"doc-{i}" for i in range(12)]
    errors = []

    def worker(seed):
        rng = random.Random(seed)
        try:
            for step in range(15):
                picked = sorted(rng.sample(keys, 3))
                if rng.random() < 0.25:
                    documents_delete(org=org, agent=agent, keys=picked)
                else:
                    documents_ingest(org=org, agent=agent, docs=[_doc(k, rng.randrange(6)) for k in picked])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    drift = stats_reconcile(org=org)
    assert [row for row in drift if row.drift] == []
    assert AgentStats.objects.for_org(org).get(agent=agent).total_chunks == drift[0].actual[0]
    recorded, actual = usage_reconcile(org=org)
    assert recorded == actual and actual["chunks"] == drift[0].actual[0]


@pytest.mark.django_db
def test_reconcile_stats_reports_and_fixes_drift():
    org = OrganizationFactory(slug="acme")
    agent = AgentFactory(organization=org, slug="kb")
    documents_ingest(org=org, agent=agent, docs=[_doc("a", 1), _doc("b", 2)])
    AgentStats.objects.for_org(org).filter(agent=agent).update(total_chunks=999, document_count=7)
    out = StringIO()
    call_command("reconcile_stats", "--org", "acme", stdout=out)
    assert "acme/kb: chunks 999 ->" in out.getvalue()
    assert "1 with drift" in out.getvalue()
    call_command("reconcile_stats", "--fix", stdout=StringIO())
    OrganizationUsage.objects.for_org(org).update(chunks=50)
    out = StringIO()
    call_command("reconcile_stats", stdout=out)
    assert "acme (usage): chunks 50 -> 5" in out.getvalue()
    call_command("reconcile_stats", "--fix", stdout=StringIO())
    out = StringIO()
    call_command("reconcile_stats", stdout=out)
    assert "0 with drift" in out.getvalue()
