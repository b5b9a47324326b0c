from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from knowledge.models import Agent, AgentStats, Chunk, Document
from knowledge.services import stats_reconcile
from tests.factories import AgentFactory, OrganizationFactory


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.md").write_text("# A\n\nalpha text")
    (tmp_path / "sub" / "b.md").write_text("# B\n\nbeta text")
    (tmp_path / "skip.txt").write_text("not matched by the glob")
    return tmp_path


def _ingest(*args):
    out, err = StringIO(), StringIO()
    call_command("ingest", *args, "--no-progress", stdout=out, stderr=err)
    return out.getvalue().strip()


@pytest.fixture
def agent(db):
    org = OrganizationFactory(slug="acme")
    return AgentFactory(organization=org, slug="kb")


def test_ingest_adds_then_skips_unchanged_then_updates_and_prunes(agent, folder):
    first = _ingest("acme", "kb", str(folder))
    assert first.startswith("documents: 2 added, 0 updated, 0 unchanged, 0 removed; chunks: +2 -0; embedded: 2 (cache hits 0);")
    assert _ingest("acme", "kb", str(folder)).startswith("documents: 0 added, 0 updated, 2 unchanged, 0 removed; chunks: +0 -0; embedded: 0")
    (folder / "a.md").write_text("# A\n\nalpha text changed")
    (folder / "sub" / "b.md").unlink()
    summary = _ingest("acme", "kb", str(folder), "--prune", "--batch-size", "1")
    assert summary.startswith("documents: 0 added, 1 updated, 0 unchanged, 1 removed; chunks: +1 -2;")
    org = agent.organization
    assert list(Document.objects.for_org(org).values_list("key", flat=True)) == ["a.md"]
    stats = AgentStats.objects.for_org(org).get(agent=agent)
    assert (stats.document_count, stats.total_chunks) == (1, 1)


def test_ingest_glob_selects_files(agent, folder):
    assert _ingest("acme", "kb", str(folder), "--glob", "*.txt").startswith("documents: 1 added")


def test_ingest_errors_are_one_line(agent, folder):
    with pytest.raises(CommandError, match="Unknown agent 'nope'"):
        _ingest("acme", "nope", str(folder))
    with pytest.raises(CommandError, match="Not a directory"):
        _ingest("acme", "kb", str(folder / "a.md"))
    with pytest.raises(CommandError, match="Unknown organization"):
        _ingest("zzz", "kb", str(folder))


@pytest.mark.django_db(transaction=True)
def test_ingest_with_two_workers_ingests_each_file_once_and_keeps_stats_exact(tmp_path):
    org = OrganizationFactory(slug="acme")
    agent = AgentFactory(organization=org, slug="kb", config={"chunk_size": 200, "chunk_overlap": 20, "parent_chunk_size": 600})
    for i in range(9):
        (tmp_path / f"doc{i}.md").write_text(f"# Doc {i}\n\n" + f"Words of document {i} and more. " * (10 + 10 * i))
    first = _ingest("acme", "kb", str(tmp_path), "--workers", "2", "--batch-size", "2")
    assert first.startswith("documents: 9 added, 0 updated, 0 unchanged, 0 removed;")
    again = _ingest("acme", "kb", str(tmp_path), "--workers", "2", "--batch-size", "2")
    assert again.startswith("documents: 0 added, 0 updated, 9 unchanged, 0 removed; chunks: +0 -0; embedded: 0 ")
    assert Document.objects.for_org(org).filter(agent=agent, status=Document.Status.READY).count() == 9
    assert [row for row in stats_reconcile(org=org) if row.drift] == []
    assert AgentStats.objects.for_org(org).get(agent=agent).total_chunks == Chunk.objects.for_org(org).count() > 9


@pytest.mark.django_db(transaction=True)
def test_ingest_with_workers_reports_a_worker_refusal_as_a_command_error(agent, folder):
    Agent.unscoped.filter(pk=agent.pk).update(status=Agent.Status.DELETING)
    with pytest.raises(CommandError, match="being deleted"):
        _ingest("acme", "kb", str(folder), "--workers", "2", "--batch-size", "1")
    assert Chunk.objects.for_org(agent.organization).count() == 0


def test_ingest_rejects_fewer_than_one_worker(agent, folder):
    with pytest.raises(CommandError, match="--workers must be at least 1"):
        _ingest("acme", "kb", str(folder), "--workers", "0")


def test_domain_errors_survive_the_worker_processes_with_their_class():
    import pickle

    from core.errors import Forbidden, quota_exceeded
    from knowledge.services.agents import AgentExists

    error = pickle.loads(pickle.dumps(AgentExists("taken")))
    assert type(error) is AgentExists and error.code == "already_exists" and error.fields == {"slug": ["taken"]}
    quota = pickle.loads(pickle.dumps(quota_exceeded("chunks", 10, 9, 2)))
    assert type(quota) is Forbidden and (quota.code, list(quota.fields)) == ("quota_exceeded", ["chunks"])
