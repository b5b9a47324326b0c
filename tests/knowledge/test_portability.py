"""Export and import (knowledge/portability.py, services/export.py, services/importing.py):
a real corpus round trip answers the same searches, imports with vectors call no provider,
and a defective file stops at its line with nothing half-imported."""

import gzip
import io
import json
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command

from knowledge.embeddings import get_provider
from knowledge.models import Agent, Chunk, Document, EmbeddingCache
from knowledge.portability import ExportFileError, ExportReader
from knowledge.services import DocumentInput, documents_ingest, export_agents_resolve, export_to_file, stats_reconcile
from knowledge.services.importing import ImportStopped, organization_import
from tenants.models import Organization
from tests.conftest import api_client
from tests.factories import AgentFactory, make_api_key

CORPUS = Path(django_settings.BASE_DIR).parent / "shared" / "corpora" / "tldr" / "pages"
# The two smallest platform folders with some size: 39 pages, two agents.
FOLDERS = {"cisco-ios": {"chunk_size": 200, "chunk_overlap": 40, "parent_chunk_size": 600}, "android": {}}
# Each shares words with most pages ("the", "a"): a query no chunk shares a word with ties them
# all at similarity 0, in row order, which hybrid's rank fusion then turns into scores.
QUERIES = ["show the interface configuration", "install an application package", "reboot the device", "list the files in a directory"]


def _load(org) -> None:
    for folder, config in FOLDERS.items():
        agent = AgentFactory(organization=org, slug=folder, config=config)
        pages = sorted((CORPUS / folder).glob("*.md"))
        documents_ingest(org=org, agent=agent, docs=[
            DocumentInput(key=p.name, text=p.read_text(), title=p.stem, metadata={"platform": folder}, source=str(p.name))
            for p in pages
        ])  # fmt: skip


@pytest.fixture
def corpus_org(org_a):
    if not CORPUS.is_dir():
        pytest.skip(f"the tldr corpus is not at {CORPUS}")
    _load(org_a)
    return org_a


def _export(org, path: Path, *, include_vectors: bool) -> Path:
    export_to_file(org=org, agent_ids=export_agents_resolve(org=org, slugs=None), include_vectors=include_vectors, path=path)
    return path


def _searches(org, prefix: str = "") -> list:
    """Each search's results as (score, its chunk keys) per run of equal scores: the order
    among equal scores is the engine's own (row order), the same in no two tables. The last
    run is cut by the limit, so only its score and length are compared."""
    client = api_client(make_api_key(org))
    answers = []
    for folder in FOLDERS:
        for mode in ("vector", "keyword", "hybrid"):
            for query in QUERIES:
                body = client.post(f"/api/v1/agents/{prefix}{folder}/search", {"query": query, "mode": mode, "limit": 8}, format="json").json()
                runs = []
                for r in body["results"]:
                    if runs and runs[-1][0] == r["score"]:
                        runs[-1][1].append(r["chunk_key"])
                    else:
                        runs.append((r["score"], [r["chunk_key"]]))
                runs = [(score, sorted(keys)) for score, keys in runs]
                answers.append(runs[:-1] + [(runs[-1][0], len(runs[-1][1]))] if runs else [])
    assert sum(len(a) for a in answers) > 3 * len(answers)  # the queries find something
    return answers


def _lines(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def _write(path: Path, lines: list[dict]) -> Path:
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    return path


def test_round_trip_with_vectors_answers_the_same_searches_and_embeds_nothing(corpus_org, tmp_path):
    path = _export(corpus_org, tmp_path / "org.jsonl.gz", include_vectors=True)
    lines = _lines(path)
    header = lines[0]
    assert (header["format"], header["version"], header["organization"], header["vectors"]) == ("lore-export", 1, "org-a", True)
    assert header["embedding"]["dimensions"] == django_settings.EMBEDDING_DIMENSIONS
    assert [line["slug"] for line in lines if line.get("type") == "agent"] == ["cisco-ios", "android"]
    assert lines[-1] == {"type": "end", "agents": 2, "documents": 39, "chunks": Chunk.objects.for_org(corpus_org).count()}

    provider = get_provider(django_settings.EMBEDDING_MODEL)
    calls = provider.calls
    with open(path, "rb") as f:
        result = organization_import(fileobj=f, into="copy")
    assert provider.calls == calls  # no embedding call at all
    assert result.complete and result.vectors_used and result.counts["embedded"] == 0
    assert result.counts["added"] == 39 and result.counts["cache_hits"] > 0

    copy = Organization.objects.get(slug="copy")
    assert _searches(copy) == _searches(corpus_org)
    assert not [row for row in stats_reconcile(org=copy) if row.drift]
    for field in ("key", "title", "source", "metadata", "content_hash", "chunk_count", "size_bytes", "text"):
        original = sorted(Document.objects.for_org(corpus_org).values_list("agent__slug", field))
        assert sorted(Document.objects.for_org(copy).values_list("agent__slug", field)) == original, field
    configs = {a.slug: (a.chunk_size, a.chunk_overlap, a.parent_chunk_size) for a in Agent.objects.for_org(copy)}
    assert configs["cisco-ios"] == (200, 40, 600)


def test_import_without_vectors_embeds_again(corpus_org, tmp_path):
    path = _export(corpus_org, tmp_path / "org.jsonl.gz", include_vectors=False)
    assert not [line for line in _lines(path) if line.get("type") == "chunk"]
    provider = get_provider(django_settings.EMBEDDING_MODEL)
    calls = provider.calls
    with open(path, "rb") as f:
        result = organization_import(fileobj=f, into="copy", agent_prefix="old-")
    assert provider.calls > calls and result.counts["embedded"] > 0 and not result.vectors_used
    copy = Organization.objects.get(slug="copy")
    assert sorted(Agent.objects.for_org(copy).values_list("slug", flat=True)) == ["old-android", "old-cisco-ios"]
    assert _searches(copy, "old-") == _searches(corpus_org)  # the hashing provider is deterministic


def test_vectors_of_another_dimension_are_not_used(corpus_org, tmp_path, settings):
    path = _export(corpus_org, tmp_path / "org.jsonl.gz", include_vectors=True)
    lines = _lines(path)
    lines[0]["embedding"]["provider"] = "openai"  # vectors of another provider: embedded here again
    with open(_write(tmp_path / "other.jsonl.gz", lines), "rb") as f:
        result = organization_import(fileobj=f, into="copy")
    assert not result.vectors_used and result.counts["embedded"] > 0 and result.counts["prefilled"] == 0


def _stops(path: Path, into: str = "copy") -> ImportStopped:
    with open(path, "rb") as f, pytest.raises(ImportStopped) as stopped:
        organization_import(fileobj=f, into=into)
    return stopped.value


def _keys(slug: str) -> list[str]:
    org = Organization.objects.filter(slug=slug).first()
    return sorted(Document.objects.for_org(org).values_list("key", flat=True)) if org else []


def test_a_truncated_file_imports_the_documents_before_the_cut_and_nothing_of_the_one_cut(corpus_org, tmp_path):
    path = _export(corpus_org, tmp_path / "org.jsonl.gz", include_vectors=True)
    lines = _lines(path)
    # Cut in the middle of the third document's chunks, as a gzip stream cut short.
    third = [i for i, line in enumerate(lines) if line.get("type") == "document"][2]
    cut = _write(tmp_path / "whole.jsonl.gz", lines[: third + 2])
    data = cut.read_bytes()
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) - 30])
    stopped = _stops(tmp_path / "cut.jsonl.gz")
    assert "truncated" in stopped.message
    imported = _keys("copy")
    assert imported == sorted(line["key"] for line in lines[:third] if line.get("type") == "document")
    assert lines[third]["key"] not in imported and len(imported) == 2
    copy = Organization.objects.get(slug="copy")
    assert not Chunk.objects.for_org(copy).filter(document__key=lines[third]["key"]).exists()
    assert not [row for row in stats_reconcile(org=copy) if row.drift]

    # A file without its end line (cut at a line) is refused too, naming where it ended.
    stopped = _stops(_write(tmp_path / "noend.jsonl.gz", lines[:-1]), into="copy2")
    assert "no end line" in stopped.message and stopped.line == len(lines)


@pytest.mark.parametrize("defect, expected", [
    ("bad_json", "not JSON"),
    ("wrong_vector", "dimensions, the header says"),
    ("missing_field", "without the field 'text'"),
    ("wrong_ordinal", "chunk ordinal"),
])  # fmt: skip
def test_a_defective_line_stops_the_import_there(corpus_org, tmp_path, defect, expected):
    lines = _lines(_export(corpus_org, tmp_path / "org.jsonl.gz", include_vectors=True))
    docs = [i for i, line in enumerate(lines) if line.get("type") == "document"]
    target = docs[3] + 1  # the fourth document's first chunk
    raw = [json.dumps(line) for line in lines]
    if defect == "bad_json":
        raw[target] = raw[target][:-5]
    elif defect == "wrong_vector":
        raw[target] = json.dumps({**lines[target], "vector": lines[target]["vector"][:-8]})
    elif defect == "missing_field":
        target = docs[3]
        raw[target] = json.dumps({k: v for k, v in lines[target].items() if k != "text"})
    else:
        raw[target] = json.dumps({**lines[target], "ordinal": 5})
    path = tmp_path / "bad.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.writelines(line + "\n" for line in raw)
    stopped = _stops(path)
    assert expected in stopped.message and stopped.line == target + 1
    assert _keys("copy") == sorted(lines[i]["key"] for i in docs[:3])
    assert stopped.result.counts["added"] == 3


@pytest.mark.parametrize("content, expected", [
    (b"not gzip at all", "not a readable gzip file"),
    (gzip.compress(b'{"format": "other", "version": 1}\n'), "not a Lore export"),
    (gzip.compress(b'{"format": "lore-export", "version": 2}\n'), "version 2"),
    (gzip.compress(b"[1, 2]\n"), "not a JSON object"),
    (gzip.compress(b""), "empty file"),
])  # fmt: skip
def test_a_foreign_file_is_refused_before_anything_is_written(db, tmp_path, content, expected):
    path = tmp_path / "foreign.gz"
    path.write_bytes(content)
    stopped = _stops(path, into="never")
    assert expected in stopped.message and stopped.line == 1
    assert not Organization.objects.filter(slug="never").exists()


def test_an_existing_agent_stops_the_import_unless_merged(corpus_org, tmp_path):
    path = _export(corpus_org, tmp_path / "org.jsonl.gz", include_vectors=True)
    stopped = _stops(path, into="org-a")
    assert "exists" in stopped.message and stopped.line == 2
    with open(path, "rb") as f:
        result = organization_import(fileobj=f, into="org-a", merge=True)
    assert result.complete and result.counts["unchanged"] == 39 and result.counts["added"] == 0


def test_legacy_documents_without_text_are_rebuilt_from_sections_or_chunks(org_a, tmp_path):
    sectioned = AgentFactory(organization=org_a, slug="sectioned", config={"chunk_size": 100, "chunk_overlap": 0, "parent_chunk_size": 300})
    overlapping = AgentFactory(organization=org_a, slug="overlapping", config={"chunk_size": 100, "chunk_overlap": 30, "parent_chunk_size": 0})
    text = "\n\n".join(f"Paragraph {i} holds words enough to make a chunk of its own, or nearly." for i in range(6))
    for agent in (sectioned, overlapping):
        documents_ingest(org=org_a, agent=agent, docs=[DocumentInput(key="old", text=text)])
    Document.objects.for_org(org_a).update(text="")  # as ingested before texts were kept
    lines = _lines(_export(org_a, tmp_path / "org.jsonl.gz", include_vectors=False))
    rebuilt = [line for line in lines if line.get("type") == "document"]
    assert [line["text_rebuilt"] for line in rebuilt] == [True, True]
    assert [line["text"] for line in rebuilt] == [text, text]


def test_the_commands_export_and_import_with_progress(corpus_org, tmp_path, capsys):
    output = tmp_path / "cmd.jsonl.gz"
    call_command("export_org", "org-a", "--agents", "android", "--include-vectors", "--output", str(output), "--no-progress")
    assert "agents 1, documents 22" in capsys.readouterr().out
    assert not (tmp_path / "cmd.jsonl.gz.part").exists()
    call_command("import_org", str(output), "--into", "copy", "--agent-prefix", "x-", "--no-progress")
    out = capsys.readouterr().out
    assert "22 added" in out and "vectors from the file: embedded 0" in out
    assert _keys("copy") == sorted(p.name for p in (CORPUS / "android").glob("*.md"))
    bad = tmp_path / "bad.gz"
    bad.write_bytes(b"nope")
    with pytest.raises(CommandError, match="line 1: not a readable gzip file"):
        call_command("import_org", str(bad), "--no-progress")


def test_the_reader_reads_a_stream_of_several_gzip_members(db, tmp_path):
    header = {"format": "lore-export", "version": 1, "organization": "o", "vectors": False,
              "embedding": {"provider": "hashing", "model": "m", "dimensions": 4}}  # fmt: skip
    members = [gzip.compress((json.dumps(line) + "\n").encode()) for line in (
        header, {"type": "agent", "slug": "a", "name": "A", "config": {}},
        {"type": "end", "agents": 1, "documents": 0, "chunks": 0},
    )]  # fmt: skip
    items = list(ExportReader(io.BytesIO(b"".join(members))).items())
    assert [type(i).__name__ for i in items] == ["AgentItem", "End"]
    with pytest.raises(ExportFileError, match="line 2: a document before any agent"):
        list(ExportReader(io.BytesIO(gzip.compress((json.dumps(header) + "\n" + json.dumps(
            {"type": "document", "key": "k", "title": "", "source": "", "content_type": "markdown", "metadata": {},
             "status": "ready", "text": "t"}) + "\n").encode()))).items())  # fmt: skip


def test_exports_and_imports_write_their_audit_events(client_a, org_a, tmp_path, monkeypatch):
    from core import jobs
    from knowledge.services import jobs_run
    from tenants.models import AuditEvent

    monkeypatch.setattr(jobs, "wake_on_commit", lambda: None)
    agent = AgentFactory(organization=org_a, slug="small")
    documents_ingest(org=org_a, agent=agent, docs=[DocumentInput(key="a", text="Words to take along.")])
    response = client_a.post("/api/v1/exports", {"include_vectors": True}, format="json")
    assert response.status_code == 202
    requested = AuditEvent.objects.for_org(org_a).get(request_id=response["X-Request-ID"])
    assert (requested.action, requested.actor_kind, requested.target_key) == ("export.requested", "api_key", str(response.json()["id"]))
    jobs_run()
    assert AuditEvent.objects.for_org(org_a).filter(action="export.completed", target_key=requested.target_key).count() == 1
    output = tmp_path / "cmd.jsonl.gz"
    call_command("export_org", "org-a", "--include-vectors", "--output", str(output), "--no-progress")
    call_command("import_org", str(output), "--into", "org-a", "--agent-prefix", "copy-", "--no-progress")
    actions = list(AuditEvent.objects.for_org(org_a).order_by("id").values_list("action", "actor_kind"))
    assert actions[-2:] == [("export.completed", "command"), ("import.completed", "command")]
