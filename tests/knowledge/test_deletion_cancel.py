"""A cancelled deletion leaves no document silently incomplete."""

from knowledge import tasks
from knowledge.models import Document
from knowledge.services import deletion_runner as deletion
from knowledge.services import stats_reconcile
from tests.factories import SMALL_CHUNKS, AgentFactory

AGENT = "/api/v1/agents/support"
TEXT = "\n\n".join(f"Paragraph {p} on subject {p * 7}, written out at length to fill a whole chunk." for p in range(12))


def test_ingesting_the_same_text_after_a_cancelled_document_deletion_restores_every_chunk(
    client_a, org_a, settings, monkeypatch, django_capture_on_commit_callbacks
):
    settings.LORE_SYNC_DELETE_MAX_CHUNKS = 5
    settings.LORE_DELETION_BATCH_SIZE = 4
    AgentFactory(organization=org_a, slug="support", config=SMALL_CHUNKS)
    created = client_a.post(AGENT + "/documents", {"key": "manual", "text": TEXT}, format="json")
    assert created.status_code == 201 and created.json()["chunk_count"] == 12
    with django_capture_on_commit_callbacks():  # queued, run below
        asked = client_a.delete(AGENT + "/documents/manual")
    assert asked.status_code == 202
    job_id = asked.json()["deletion"]["id"]

    original, batches = deletion._batch, []

    def batch(*args):
        more = original(*args)
        batches.append(1)
        if len(batches) == 1:
            assert client_a.post(f"/api/v1/deletions/{job_id}/cancel").json()["status"] == "cancelled"
        return more

    monkeypatch.setattr(deletion, "_batch", batch)
    tasks.deletion_job_run(job_id)
    monkeypatch.undo()
    half = client_a.get(AGENT + "/documents/manual").json()
    assert half["chunk_count"] == 8  # one batch of four went before the cancel

    again = client_a.post(AGENT + "/documents", {"key": "manual", "text": TEXT}, format="json")
    assert again.status_code == 200, again.json()
    body = again.json()
    assert not body["unchanged"] and body["chunk_count"] == 12 and body["chunks_added"] == 12
    assert Document.objects.for_org(org_a).get(key="manual").chunk_count == 12
    assert client_a.get(AGENT + "/stats").json()["total_chunks"] == 12
    assert not [row for row in stats_reconcile(org=org_a) if row.drift]
    # And now it is unchanged.
    assert client_a.post(AGENT + "/documents", {"key": "manual", "text": TEXT}, format="json").json()["unchanged"]
