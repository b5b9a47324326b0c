"""Partial HNSW indexes for the agents searched through HNSW.

On the shared index, a filtered walk for one agent must skip every other agent's
neighbours, and on clustered data it can settle in the wrong cluster altogether; an
agent's own graph holds only its chunks, so it answers in about half the time at the
same ef_search, and right (bench/search.py: recall@10 0.90-0.92 on the shared index
for agents of 6.7k-13k chunks, 0.997 on their own). The planner picks the partial index
whenever a query says `agent_id = <literal>`, which is how search/engine.py asks. The
shared index still serves searches over several agents.

Built CONCURRENTLY (writes continue meanwhile) by a scheduled task; dropped when the
agent is deleted or shrinks below half the threshold (hysteresis, so an agent near
the line is not rebuilt over and over).
"""

import logging
import re

from django.conf import settings
from django.db import connection

logger = logging.getLogger(__name__)

PREFIX = "chunk_hnsw_agent_"


def index_name(agent_id: int) -> str:
    return f"{PREFIX}{agent_id}"


def existing() -> dict[int, str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'knowledge_chunk' AND indexname LIKE %s",
            [PREFIX + "%"],
        )
        names = [row[0] for row in cursor.fetchall()]
    return {int(m.group(1)): name for name in names if (m := re.fullmatch(PREFIX + r"(\d+)", name))}


def sync_agent_indexes() -> tuple[list[int], list[int]]:
    """Creates missing and drops unneeded partial indexes; returns (created, dropped) agent ids.
    Needs autocommit (CONCURRENTLY cannot run in a transaction): call from a task or command."""
    threshold = settings.SEARCH_AGENT_INDEX_MIN_CHUNKS
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT a.id, a.status, s.total_chunks FROM knowledge_agent a"
            " JOIN knowledge_agentstats s ON s.agent_id = a.id"
        )
        agents = {agent_id: (status, total) for agent_id, status, total in cursor.fetchall()}
    have = existing()
    wanted = [aid for aid, (status, total) in agents.items() if status == "active" and total >= threshold and aid not in have]
    unwanted = [
        aid for aid in have
        if aid not in agents or agents[aid][0] != "active" or agents[aid][1] < threshold // 2
    ]  # fmt: skip
    for agent_id in unwanted:
        drop_agent_index(agent_id)
    with connection.cursor() as cursor:
        for agent_id in wanted:
            logger.info("search: building partial HNSW index for agent %s", agent_id)
            # A failed concurrent build leaves an INVALID index behind; drop it first.
            cursor.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{index_name(agent_id)}"')
            cursor.execute(
                f'CREATE INDEX CONCURRENTLY "{index_name(agent_id)}" ON knowledge_chunk'
                " USING hnsw (embedding halfvec_cosine_ops) WITH (m = 16, ef_construction = 64)"
                f" WHERE agent_id = {int(agent_id)}"
            )
    return wanted, unwanted


def drop_agent_index(agent_id: int) -> bool:
    """Drops the agent's partial index, if any, CONCURRENTLY: searches and writes on
    knowledge_chunk go on meanwhile. Only in autocommit (a plain DROP would lock the whole
    table); inside a transaction it returns False and the scheduled sync drops it later."""
    if not connection.get_autocommit():
        return False
    with connection.cursor() as cursor:
        cursor.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{index_name(agent_id)}"')
    return True
