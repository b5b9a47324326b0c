import pytest
from django.core.management import CommandError, call_command

from knowledge.models import Agent
from tenants.models import Organization
from tests.conftest import api_client


def _run(*args) -> str:
    from io import StringIO

    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue().strip()


def test_create_org_key_and_agent_work_together(db):
    assert "Created organization acme" in _run("create_org", "acme", "--name", "Acme Inc")
    raw_key = _run("create_api_key", "acme", "--name", "ci")
    assert "Created agent acme/support" in _run("create_agent", "acme", "support")
    assert Organization.objects.get(slug="acme").name == "Acme Inc"
    body = api_client(raw_key).get("/api/v1/agents").json()
    assert [a["slug"] for a in body["results"]] == ["support"]


def test_duplicate_org_is_a_one_line_error(db):
    _run("create_org", "acme")
    with pytest.raises(CommandError, match="already exists"):
        _run("create_org", "acme")


def test_unknown_org_is_a_clear_error(db):
    with pytest.raises(CommandError, match="Unknown organization 'nope'"):
        _run("create_api_key", "nope")
    with pytest.raises(CommandError, match="Unknown organization 'nope'"):
        _run("create_agent", "nope", "support")


def test_duplicate_or_bad_agent_slug_is_an_error(org_a):
    _run("create_agent", "org-a", "support")
    with pytest.raises(CommandError, match="already exists"):
        _run("create_agent", "org-a", "support")
    with pytest.raises(CommandError, match="slug"):
        _run("create_agent", "org-a", "Bad Slug")
    assert Agent.objects.for_org(org_a).count() == 1


def test_demo_setup_prints_a_working_key_and_is_rerunnable(db, tmp_path):
    (tmp_path / "throttling.md").write_text("# Throttling\n\nThrottling limits requests per user.")
    (tmp_path / "other.md").write_text("# Other\n\nSomething unrelated.")
    first = _run("demo_setup", "--corpus", str(tmp_path))
    second = _run("demo_setup", "--corpus", str(tmp_path))
    key = second.split("Bearer ")[1].split("'")[0]
    old_key = first.split("Bearer ")[1].split("'")[0]
    assert api_client(key).get("/api/v1/agents").json()["results"][0]["slug"] == "docs"
    assert api_client(old_key).get("/api/v1/agents").status_code == 401
    search = second.split("Search: ")[1]
    body = search.split("-d '")[1].split("'")[0]
    results = api_client(key).post("/api/v1/agents/docs/search", body, content_type="application/json").json()["results"]
    assert results[0]["document_key"] == "throttling.md"


def test_demo_setup_says_when_it_finds_no_corpus(db, tmp_path):
    out = _run("demo_setup", "--corpus", str(tmp_path / "missing"))
    assert "the demo agent has no documents: no folder at" in out
    assert "LORE_DEMO_CORPUS" in out
