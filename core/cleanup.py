"""What other apps must remove when an agent or an organization goes, without the deleting
app importing them: each app registers its steps at startup (its AppConfig.ready), the
deletion runs what is registered. Apps import one way (core <- tenants <- knowledge <-
search); search's data about an agent (its graph, its access rows) goes this way.

- before_agent(org_id, agent_id): once, before the agent's rows go (a graph dropped first
  is not cleaned by autovacuum entry by entry).
- before_organization(org_id): once, before the rows of an organization being deleted.
- agent_rows(cursor, agent_id, limit) -> rows deleted: one batch of the app's own rows of
  the agent, run until it deletes none, inside the deletion's batch transaction; `cursor`
  is bound to the agent's organization (core/db.py: {org} in its statements).
"""

from collections.abc import Callable

_steps: dict[str, list[Callable]] = {"before_agent": [], "before_organization": [], "agent_rows": []}


def register(*, before_agent: Callable | None = None, before_organization: Callable | None = None,
             agent_rows: Callable | None = None) -> None:  # fmt: skip
    for kind, step in (("before_agent", before_agent), ("before_organization", before_organization), ("agent_rows", agent_rows)):
        if step is not None and step not in _steps[kind]:
            _steps[kind].append(step)


def before_agent(*, org_id: int, agent_id: int) -> None:
    for step in _steps["before_agent"]:
        step(org_id=org_id, agent_id=agent_id)


def before_organization(*, org_id: int) -> None:
    for step in _steps["before_organization"]:
        step(org_id=org_id)


def agent_rows(cursor, *, agent_id: int, limit: int) -> int:
    """Rows deleted by one batch of every registered step (0: nothing of the agent is left)."""
    return sum(step(cursor, agent_id=agent_id, limit=limit) for step in _steps["agent_rows"])
