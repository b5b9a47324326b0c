"""Search's part of an agent's or organization's deletion (registered in core.cleanup)."""

from search import indexes


def drop_agent_indexes(*, org_id: int, agent_id: int) -> None:
    # Search no longer reads the agent's own graph (it answers 409 for a deleting agent).
    indexes.drop_agent_index(agent_id)


def drop_organization_index(*, org_id: int) -> None:
    indexes.drop_org_index(org_id)


def delete_agent_access(cursor, *, agent_id: int, limit: int) -> int:
    # chunkaccess_org_agent_day_chunk_uniq (organization, agent, ...).
    cursor.execute(
        "DELETE FROM search_chunkaccess WHERE id IN (SELECT id FROM search_chunkaccess"
        " WHERE organization_id = {org} AND agent_id = %s LIMIT %s)",
        [agent_id, limit],
    )
    return cursor.rowcount
