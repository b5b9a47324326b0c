"""Keyword search's text analysis (issue 18, knowledge/migrations/0012): punctuation splits
words, alike in the chunks' search_vector and in questions, and the migration that
re-analyses existing chunks leaves them and their term statistics as a fresh ingest would."""

import importlib

import pytest
from django.conf import settings
from django.db import connection

from core import db
from knowledge.models import AgentStats, TermCount
from search import keywords
from tests.factories import AgentFactory, OrganizationFactory
from tests.search.conftest import ingest
from tests.search.test_bm25 import keyword, recorded, recount

MIGRATION = importlib.import_module("knowledge.migrations.0012_text_analysis_words")

GERMAN = {
    "ssh-keygen": ("# ssh-keygen\n\nEinen neuen SSH-Schlüssel erzeugen: `ssh-keygen -t ed25519 -f ~/.ssh/id_ed25519`.", {}),
    "tar": ("# tar\n\nEin Archiv entpacken: `tar xzf {{pfad/zu/datei.tar.gz}}`, siehe https://www.gnu.org/software/tar.", {}),
    "ping": ("# ping\n\nSendet ICMP ECHO_REQUEST Pakete an Geräte im Netzwerk: `ping example.com`.", {}),
}


def lexemes(org, agent) -> dict[str, set[str]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT d.key, t.lexeme FROM knowledge_chunk c JOIN knowledge_document d ON d.id = c.document_id,"
            " unnest(c.search_vector) t WHERE c.organization_id = %s AND c.agent_id = %s",
            [org.pk, agent.pk],
        )
        found: dict[str, set[str]] = {}
        for key, lexeme in cursor.fetchall():
            found.setdefault(key, set()).add(lexeme)
    return found


@pytest.mark.django_db
def test_punctuation_splits_words_in_chunks():
    org = OrganizationFactory()
    agent = AgentFactory(organization=org, config={"language": "german"})
    ingest(org, agent, GERMAN)
    found = lexemes(org, agent)
    # Hyphenated words are their parts only; paths, file names and URLs are their words.
    assert {"ssh", "schlussel", "keyg", "ed25519", "id"} <= found["ssh-keygen"]  # id_ed25519: the parser splits at _
    assert {"ssh-schlussel", "ssh-keyg", "~/.ssh/id_ed25519", "/.ssh/id_ed25519"}.isdisjoint(found["ssh-keygen"])
    assert {"pfad", "datei", "tar", "gz", "gnu", "org", "softwar", "www"} <= found["tar"]
    assert not {lexeme for lexeme in found["tar"] if any(ch in lexeme for ch in "./:")}
    assert {"echo", "requ", "exampl", "com"} <= found["ping"]


@pytest.mark.django_db
def test_questions_are_analysed_as_chunks_are():
    assert keywords.query_terms("german", "einen neuen SSH-Schlüssel erzeugen") == ("neu", "ssh", "schlussel", "erzeug")
    assert keywords.query_terms("spanish", "cómo descomprimir un fichero tar.gz") == ("com", "descomprim", "ficher", "tar", "gz")
    assert keywords.query_terms("english", "edit ~/.ssh/config") == ("edit", "ssh", "config")
    assert keywords.query_terms("simple", "Node.js-Versionen") == ("node", "js", "versionen")


@pytest.mark.django_db
def test_hyphenated_questions_phrases_and_exclusions_match_their_words():
    org = OrganizationFactory()
    agent = AgentFactory(organization=org, config={"language": "german"})
    ingest(org, agent, GERMAN)
    assert keyword(org, [agent], "SSH-Schlüssel")[0][0].startswith("ssh-keygen")
    assert keyword(org, [agent], "tar.gz entpacken")[0][0].startswith("tar")
    # A phrase is its words in order, whatever punctuation joins them on either side.
    assert [key.split("#")[0] for key, _ in keyword(org, [agent], '"SSH Schlüssel"')] == ["ssh-keygen"]
    assert [key.split("#")[0] for key, _ in keyword(org, [agent], '"datei.tar"')] == ["tar"]
    assert [key.split("#")[0] for key, _ in keyword(org, [agent], "Netzwerk Archiv -example.com")] == ["tar"]


def _analyse_as_before(org, agents):
    """The chunks' search_vector and term statistics as PostgreSQL's parser alone made them
    (before 0012), counted exactly from those vectors."""
    with db.unscoped("test: the analysis before migration 0012") as sql:
        sql.execute(
            "UPDATE knowledge_chunk c SET search_vector = to_tsvector(a.language::regconfig, c.text)"
            " FROM knowledge_agent a WHERE a.id = c.agent_id AND c.agent_id = ANY(%s)",
            [[a.pk for a in agents]],
        )
        sql.execute("DELETE FROM knowledge_termcount WHERE agent_id = ANY(%s)", [[a.pk for a in agents]])
        sql.execute(
            "INSERT INTO knowledge_termcount (organization_id, agent_id, lexeme, chunks, compacted)"
            " SELECT c.organization_id, c.agent_id, t.lexeme, count(*), false FROM knowledge_chunk c,"
            " unnest(c.search_vector) t WHERE c.agent_id = ANY(%s) GROUP BY 1, 2, 3",
            [[a.pk for a in agents]],
        )
        sql.execute(
            "UPDATE knowledge_agentstats s SET total_terms = coalesce((SELECT sum(greatest(cardinality(t.positions), 1))"
            " FROM knowledge_chunk c, unnest(c.search_vector) t WHERE c.agent_id = s.agent_id), 0)"
            " WHERE s.agent_id = ANY(%s)",
            [[a.pk for a in agents]],
        )


@pytest.mark.django_db
def test_migration_reanalyses_chunks_and_rebuilds_term_statistics_exactly():
    org_de, org_en = OrganizationFactory(), OrganizationFactory()
    german = AgentFactory(organization=org_de, slug="de", config={"language": "german"})
    simple = AgentFactory(organization=org_de, slug="plain", config={"language": "simple"})
    english = AgentFactory(organization=org_en, slug="en", config={"language": "english"})
    empty = AgentFactory(organization=org_en, slug="empty")
    ingest(org_de, german, GERMAN)
    ingest(org_de, simple, GERMAN)
    ingest(org_en, english)
    fresh = {a.pk: (lexemes(o, a), recount(o, a)) for o, a in ((org_de, german), (org_de, simple), (org_en, english))}
    _analyse_as_before(org_de, [german, simple])
    _analyse_as_before(org_en, [english])
    assert "ssh-schlussel" in lexemes(org_de, german)["ssh-keygen"]
    assert recorded(org_de, german) == recount(org_de, german) != fresh[german.pk][1]
    versions = dict(AgentStats.unscoped.values_list("agent_id", "data_version"))

    with connection.schema_editor() as editor:
        MIGRATION.Migration.operations[1].run(None, editor)
    with connection.cursor() as cursor:  # the operation ends in RESET ROLE; the suite's sessions bypass
        cursor.execute(f"SET ROLE {settings.LORE_DB_BYPASS_ROLE}")

    for org, agent in ((org_de, german), (org_de, simple), (org_en, english)):
        # As a fresh ingest analyses them, and counted exactly: one compacted row per lexeme.
        assert lexemes(org, agent) == fresh[agent.pk][0]
        assert recorded(org, agent) == recount(org, agent) == fresh[agent.pk][1]
        rows = TermCount.unscoped.filter(organization=org, agent=agent)
        assert rows.count() == len(fresh[agent.pk][1][0]) and not rows.filter(compacted=False).exists()
    assert AgentStats.unscoped.get(agent_id=empty.pk).total_terms == 0
    # Cached results of every agent go.
    assert all(AgentStats.unscoped.get(agent_id=a).data_version == v + 1 for a, v in versions.items())


@pytest.mark.django_db
def test_stop_words_postgresql_lists_miss_are_no_question_terms():
    # dass (German after the 1996 reform), unsere (PostgreSQL's list spells it unse...), vosotros.
    assert keywords.query_terms("german", "verhindern, dass unsere Rechner einschlafen") == ("verhind", "rechn", "einschlaf")
    assert keywords.query_terms("spanish", "vosotros instaláis paquetes") == ("instal", "paquet")
    assert keywords.query_terms("english", "dass unsere") == ("dass", "unser")  # another language's stop words are words
