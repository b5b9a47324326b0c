"""Keeping AgentStats exact: the delta writer every change uses, and the recount that proves it."""

from dataclasses import dataclass

from django.db import transaction
from django.db.models import F

from knowledge.models import Agent, AgentStats
from knowledge.selectors import agent_stats_recount
from tenants.models import Organization


def stats_apply(
    *, org: Organization, agent: Agent, chunks: int = 0, documents: int = 0, size_bytes: int = 0, ingested_at=None
) -> None:
    """Moves an agent's counters by exact deltas: one UPDATE of one row, inside the
    caller's transaction, so the counts commit or roll back with the rows they count.
    Also bumps data_version, which invalidates cached search results."""
    values = {
        "total_chunks": F("total_chunks") + chunks,
        "document_count": F("document_count") + documents,
        "total_size_bytes": F("total_size_bytes") + size_bytes,
        "data_version": F("data_version") + 1,
    }
    if ingested_at is not None:
        values["last_ingested_at"] = ingested_at
    AgentStats.objects.for_org(org).filter(agent_id=agent.pk).update(**values)


@dataclass
class Drift:
    agent_slug: str
    recorded: tuple[int, int, int]
    actual: tuple[int, int, int]

    @property
    def drift(self) -> bool:
        return self.recorded != self.actual


def stats_reconcile(*, org: Organization, fix: bool = False) -> list[Drift]:
    """Recounts each agent's (chunks, ready documents, bytes of ready documents) with
    COUNT/SUM (the slow way, on purpose) and compares with the stats rows.

    Each agent is checked in its own transaction with its stats row locked, so a
    concurrent ingest (which updates that row) cannot slip between count and compare.
    """
    rows = []
    for agent in Agent.objects.for_org(org).exclude(status=Agent.Status.DELETED).order_by("slug"):
        with transaction.atomic():
            stats = AgentStats.objects.for_org(org).select_for_update().get(agent=agent)
            actual = agent_stats_recount(org=org, agent=agent)
            row = Drift(agent.slug, (stats.total_chunks, stats.document_count, stats.total_size_bytes), actual)
            if fix and row.drift:
                AgentStats.objects.for_org(org).filter(agent=agent).update(
                    total_chunks=actual[0], document_count=actual[1], total_size_bytes=actual[2],
                    data_version=F("data_version") + 1,
                )  # fmt: skip
            rows.append(row)
    return rows
