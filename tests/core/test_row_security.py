"""Row-level security as the second line of defence (core/db.py, core/rls.py): every
tenant table admits only the rows of the organization its transaction declared."""

import re

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection, transaction
from django.db.utils import ProgrammingError

from core import db
from knowledge.models import Agent, Chunk, Document, IngestionJob
from knowledge.services import DocumentInput, documents_ingest, ingestion_job_create
from search import tracking
from tenants import api
from tests.factories import AgentFactory

TENANT_TABLES = """
SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,
       (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind = 'r'
  AND EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'organization_id' AND NOT a.attisdropped)
ORDER BY 1
"""


@pytest.fixture
def strict(db):
    """The test's session as a server's: the login role, nothing bypassed unless declared."""
    with connection.cursor() as cursor:
        cursor.execute("RESET ROLE")
    connection.lore_session_bypass = False
    yield
    connection.lore_session_bypass = True
    with connection.cursor() as cursor:
        cursor.execute(f"SET ROLE {settings.LORE_DB_BYPASS_ROLE}")


@pytest.fixture
def two_tenants(org_a, agent_a, org_b, agent_b):
    for org, agent in ((org_a, agent_a), (org_b, agent_b)):
        documents_ingest(org=org, agent=agent, docs=[DocumentInput(key="doc", text="# Doc\n\nThe same words in both.")])
    return org_a, org_b


def test_every_tenant_table_has_its_policy_forced_on_the_owner_too(db):
    with connection.cursor() as cursor:
        cursor.execute(TENANT_TABLES)
        tables = cursor.fetchall()
    assert len(tables) >= 12
    assert [t for t in tables if t[1:] != (True, True, 1)] == []


def test_the_application_role_is_no_superuser_and_bypasses_nothing(strict):
    with connection.cursor() as cursor:
        cursor.execute("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
        assert cursor.fetchone() == (False, False)


def test_a_statement_that_forgets_its_organization_reads_and_writes_nothing_of_another(two_tenants):
    org_a, org_b = two_tenants
    with db.tenant(org_a) as sql:
        # No organization predicate at all: the policy is the only filter left.
        assert {row[0] for row in sql.fetchall("SELECT DISTINCT organization_id FROM knowledge_chunk")} == {org_a.pk}
        assert sql.rowcount("UPDATE knowledge_document SET title = 'mine'") == 1
        assert sql.rowcount("DELETE FROM knowledge_section WHERE organization_id = %s", [org_b.pk]) == 0
    with db.unscoped("check what org B still has"):
        assert Document.unscoped.get(organization=org_b).title != "mine"
        assert Chunk.unscoped.filter(organization=org_b).exists()


def test_a_row_of_another_organization_cannot_be_written(two_tenants):
    org_a, org_b = two_tenants
    with pytest.raises(ProgrammingError, match="row-level security"), db.tenant(org_a) as sql:
        sql.execute("UPDATE knowledge_agentstats SET organization_id = %s", [org_b.pk])


def test_without_a_declared_organization_nothing_is_visible(strict, two_tenants):
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM knowledge_chunk")
        assert cursor.fetchone() == (0,)
        cursor.execute("SELECT count(*) FROM tenants_apikey")
        assert cursor.fetchone() == (0,)


def test_orm_querysets_run_under_their_organizations_policy(strict, two_tenants):
    org_a, org_b = two_tenants
    assert Document.objects.for_org(org_a).count() == 1
    assert list(Document.objects.for_org(org_b).values_list("organization_id", flat=True)) == [org_b.pk]
    assert Document.unscoped.count() == 2  # the bypass, by name
    with db.tenant(org_a):
        assert Document.objects.for_org(org_a).count() == 1
        assert list(Agent._base_manager.values_list("organization_id", flat=True)) == [org_a.pk]  # plain Django


def test_the_tenant_placeholder_binds_the_scopes_organization(two_tenants):
    org_a, _ = two_tenants
    with db.tenant(org_a) as sql:
        assert sql.fetchone("SELECT {org}, %s, '100%%'", ["x"]) == (org_a.pk, "x", "100%")
        assert sql.fetchone("SELECT {org} + %(n)s", {"n": 1}) == (org_a.pk + 1,)
    with pytest.raises(db.UnscopedSQLError), db.unscoped("no organization here") as sql:
        sql.execute("SELECT {org}")


def test_scopes_nest_and_leave_the_transaction_as_they_found_it(two_tenants):
    org_a, org_b = two_tenants
    with db.tenant(org_a):
        with db.tenant(org_b) as sql:
            assert sql.fetchone("SELECT current_setting('lore.organization_id')") == (str(org_b.pk),)
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('lore.organization_id'), current_user")
            assert cursor.fetchone() == (str(org_a.pk), connection.settings_dict["USER"])
        with pytest.raises(RuntimeError), db.unscoped("then fails"):
            raise RuntimeError
        assert connection.lore_scope == org_a.pk
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_user")
            assert cursor.fetchone() == (connection.settings_dict["USER"],)


def test_every_api_request_runs_under_its_organizations_policy(client_a, org_a, agent_a, monkeypatch):
    seen = []
    initial = api.OrgAPIView.initial

    def spy(self, request, *args, **kwargs):
        initial(self, request, *args, **kwargs)
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_user, current_setting('lore.organization_id', true)")
            seen.append(cursor.fetchone())

    monkeypatch.setattr(api.OrgAPIView, "initial", spy)
    assert client_a.get("/api/v1/agents").status_code == 200
    assert client_a.get(f"/api/v1/agents/{agent_a.slug}/stats").status_code == 200
    assert client_a.post(f"/api/v1/agents/{agent_a.slug}/search", {"query": "words"}, format="json").status_code == 200
    # Search, too, in a test's transaction; outside one it has no request transaction
    # (the next test).
    assert seen == [(connection.settings_dict["USER"], str(org_a.pk))] * 3


@pytest.mark.django_db(transaction=True)
def test_search_without_a_transaction_reads_only_its_organizations_rows(strict, org_a, agent_a, org_b, agent_b, client_a):
    # As a server runs it: autocommit, no request transaction. The key's statement declares
    # its organization for itself; each search statement carries its own declaration.
    for org, agent in ((org_a, agent_a), (org_b, agent_b)):
        documents_ingest(org=org, agent=agent, docs=[DocumentInput(key=f"{org.slug}-doc", text="Archive files with tar.")])
    for mode in ("vector", "keyword", "hybrid"):
        for path in (f"/api/v1/agents/{agent_a.slug}/search", "/api/v1/search"):
            body = client_a.post(path, {"query": "archive files tar", "mode": mode}, format="json").json()
            assert [r["document_key"] for r in body["results"]] == ["org-a-doc"], (mode, path)
    with db.tenant(org_b):
        AgentFactory(organization=org_b, slug="org-b-only")
    assert client_a.post("/api/v1/agents/org-b-only/search", {"query": "tar"}, format="json").status_code == 404
    with connection.cursor() as cursor:  # nothing left declared on the connection
        cursor.execute("SELECT current_setting('lore.organization_id', true), current_user")
        assert cursor.fetchone() in (("", connection.settings_dict["USER"]), (None, connection.settings_dict["USER"]))


@pytest.fixture
def strict_helpers(strict):
    """strict for the helper threads' connections too (core/parallel.py): in tests every new
    connection starts as the bypass role (tests/conftest.py), in a server none does."""
    from django.db.backends.signals import connection_created

    from core import parallel

    parallel.shutdown()
    connection_created.disconnect(db._session_bypass)
    yield
    parallel.shutdown()
    connection_created.connect(db._session_bypass)


@pytest.mark.django_db(transaction=True)
def test_a_searchs_lists_on_helper_connections_read_only_its_organizations_rows(
    strict_helpers, org_a, agent_a, org_b, agent_b, client_a, settings, monkeypatch
):
    from core import parallel
    from search import engine

    settings.SEARCH_PARALLEL_MIN_CHUNKS = 0
    for org, agent in ((org_a, agent_a), (org_b, agent_b)):
        documents_ingest(org=org, agent=agent, docs=[DocumentInput(key=f"{org.slug}-doc", text="Archive files with tar.")])
    # A helper's connection is a server's: a statement that declares nothing reads nothing.
    def undeclared():
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_user, count(*) FROM knowledge_chunk")
            return cursor.fetchone()

    assert parallel.beside(undeclared).result() == (connection.settings_dict["USER"], 0)
    ran = []
    real = engine.fetch_candidates

    def spy(**kwargs):
        ran.append(kwargs["org_id"])
        return real(**kwargs)

    monkeypatch.setattr(engine, "fetch_candidates", spy)
    for path in (f"/api/v1/agents/{agent_a.slug}/search", "/api/v1/search"):
        body = client_a.post(path, {"query": "archive files tar", "mode": "hybrid"}, format="json").json()
        assert [r["document_key"] for r in body["results"]] == ["org-a-doc"], path
    assert ran and set(ran) == {org_a.pk}


def test_ingestion_and_search_work_with_nothing_bypassed(strict, org_a, agent_a, org_b, agent_b, client_a):
    documents_ingest(org=org_a, agent=agent_a, docs=[DocumentInput(key="a", text="Archive files with tar.")])
    documents_ingest(org=org_b, agent=agent_b, docs=[DocumentInput(key="b", text="Archive files with tar.")])
    body = client_a.post(f"/api/v1/agents/{agent_a.slug}/search", {"query": "archive tar", "mode": "hybrid"}, format="json").json()
    assert [r["document_key"] for r in body["results"]] == ["a"]


def test_the_workers_paths_work_with_nothing_bypassed(strict, org_a, agent_a, client_a, monkeypatch, settings):
    from core import jobs
    from knowledge import tasks

    monkeypatch.setattr(jobs, "wake_on_commit", lambda: None)
    job = ingestion_job_create(org=org_a, agent=agent_a, docs=[DocumentInput(key="k", text="Jobs run by workers.")])
    tasks.run_jobs()  # claims across organizations (a bypass), runs under the organization's policy
    assert IngestionJob.objects.for_org(org_a).get(pk=job.pk).status == IngestionJob.Status.COMPLETED
    assert client_a.post(f"/api/v1/agents/{agent_a.slug}/search", {"query": "workers"}, format="json").json()["results"]
    assert tracking.flush() != (0, 0)  # every organization's counters, in one bypassing statement
    tasks.jobs_sweep()


def test_management_commands_work_with_nothing_bypassed(strict, two_tenants, capsys):
    call_command("reconcile_stats")
    call_command("org_limits", "org-b")
    assert re.search(r"^agents\s+\d+\s+1\s", capsys.readouterr().out, re.M)  # its usage row, read
    call_command("reconcile_stats", "--org", "org-a", "--fix")
    call_command("deletions")


def test_the_admin_sees_every_organization_with_nothing_bypassed(strict, two_tenants, admin_client):
    response = admin_client.get("/admin/knowledge/agent/")
    assert response.status_code == 200
    assert b"org-a" in response.content and b"org-b" in response.content


def test_an_agent_deletion_runs_to_the_end_with_nothing_bypassed(strict, org_a, agent_a, monkeypatch):
    from core import jobs
    from knowledge.models import DeletionJob
    from knowledge.services import agent_delete_request, deletion_job_run

    monkeypatch.setattr(jobs, "wake_on_commit", lambda: None)
    documents_ingest(org=org_a, agent=agent_a, docs=[DocumentInput(key="a", text="Gone soon.")])
    job = agent_delete_request(org=org_a, agent=AgentFactory._meta.model.objects.for_org(org_a).get(pk=agent_a.pk))
    assert deletion_job_run(job=job).status == DeletionJob.Status.COMPLETED
    assert not Chunk.objects.for_org(org_a).exists()


def test_raw_sql_in_the_apps_goes_through_core_db_only():
    """Every statement the apps write runs in db.tenant(org) (its organization bound to
    {org}), db.unscoped(reason), db.untenanted(reason) or db.ddl(): `grep -rn "db.unscoped("`
    lists every cross-tenant one. No cursor of Django's own, no hand-bound organization."""
    from pathlib import Path

    root = Path(settings.BASE_DIR)
    offenders = []
    for app in ("core", "tenants", "knowledge", "search", "console"):
        for path in (root / app).rglob("*.py"):
            if path == root / "core" / "db.py" or "migrations" in path.parts:
                continue
            text = path.read_text()
            for needle in ("connection.cursor(", "binding_cursor(", "connections[", "organization_id = %s", "organization_id=%s"):
                if needle in text:
                    offenders.append((str(path.relative_to(root)), needle))
    assert offenders == []


@pytest.mark.django_db(transaction=True)
def test_a_read_outside_a_transaction_declares_its_organization_first(strict, two_tenants):
    org_a, org_b = two_tenants
    assert not connection.in_atomic_block
    with db.tenant(org_a, atomic=False) as sql:
        # No organization predicate: the policy alone, declared by the statement itself,
        # before its CTE, its InitPlan and its scans run.
        assert sql.fetchall("SELECT DISTINCT organization_id FROM knowledge_chunk") == [(org_a.pk,)]
        assert sql.fetchone(
            "WITH d AS MATERIALIZED (SELECT organization_id FROM knowledge_document)"
            " SELECT (SELECT count(*) FROM knowledge_chunk), count(*), min(organization_id) FROM d"
        ) == (1, 1, org_a.pk)
        assert sql.fetchone("SELECT count(*) FROM knowledge_agent WHERE organization_id = {org} AND slug = %(s)s", {"s": "support"}) == (1,)
        with pytest.raises(db.UnscopedSQLError):
            sql.execute("UPDATE knowledge_document SET title = 'x'")
    with connection.cursor() as cursor:  # and it ended with the statement
        cursor.execute("SELECT count(*) FROM knowledge_chunk")
        assert cursor.fetchone() == (0,)
