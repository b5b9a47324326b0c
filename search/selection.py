"""The agents a search runs over: value types computed once per selection, and the SQL
condition that restricts chunks to them."""

from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

from django.conf import settings


@dataclass(frozen=True)
class AgentSelection:
    """The agents a search runs over, and what a search derives from them, computed once
    per selection: a selection of a whole organization is reused for as long as none of
    its agents changes (search/selectors.py), and has 1,000 agents to go over."""

    agents: list["AgentRef"]
    # Set when the agents are all the organization's searchable ones: the ids of those
    # that still hold chunks but may not be searched (being deleted), else None.
    everyone_but: list[int] | None = None
    # For such a selection: a digest of every live agent's data version and status, which
    # stands for them where results are cached.
    digest: str | None = None

    @cached_property
    def versions(self) -> str:
        """What makes a cached result of these agents current: their data versions."""
        return self.digest or ",".join([f"{a.id}.{a.data_version}" for a in self.agents])

    @cached_property
    def ids(self) -> list[int]:
        return [a.id for a in self.agents]

    @cached_property
    def slug_by_id(self) -> dict[int, str]:
        return {a.id: a.slug for a in self.agents}

    @cached_property
    def strategy(self) -> str:
        """How a vector search of these agents runs, for metrics (search/engine.py decides it
        per embedding model; agents of several models are rare): "exact" up to
        SEARCH_EXACT_MAX_CHUNKS chunks, else the graph its statement is written for, the
        agent's own ("agent_graph") or the organization's ("org_graph"). Until that graph
        is built the statement scans exactly (core.metrics: lore_index_sync_backlog)."""
        split = any(len(parts) > 1 for parts in self.vector_parts.values())
        return "agent_graph" if split else vector_strategy(self.agents)

    @cached_property
    def by_model(self) -> dict[str, list["AgentRef"]]:
        groups: dict[str, list[AgentRef]] = {}
        for agent in self.agents:
            groups.setdefault(agent.embedding_model, []).append(agent)
        return groups

    @cached_property
    def vector_parts(self) -> dict[str, list[tuple[list["AgentRef"], list[int] | None]]]:
        """Per embedding model, its vector statements' (agents, everyone_but) (vector_parts):
        a model's agents are "everyone" only when they are all the selection's."""
        return {
            model: vector_parts(group, self.everyone_but if len(group) == len(self.agents) else None)
            for model, group in self.by_model.items()
        }


def vector_strategy(agents: list["AgentRef"]) -> str:
    """"exact", "agent_graph" or "org_graph": how a vector statement over `agents` runs
    (AgentSelection.strategy; search/engine.py's walk sets its graph's ef_search by it)."""
    total = sum(a.total_chunks for a in agents)
    if total <= settings.SEARCH_EXACT_MAX_CHUNKS:
        return "exact"
    return "agent_graph" if len(agents) == 1 and total >= settings.SEARCH_AGENT_INDEX_MIN_CHUNKS else "org_graph"


def vector_parts(agents: list["AgentRef"], everyone_but: list[int] | None) -> list[tuple[list["AgentRef"], list[int] | None]]:
    """The vector statements of a search of `agents` (of one embedding model), each
    (agents, everyone_but) as search/engine.py's vector_nearest takes them: one, unless
    they are too few chunks together for an organization's graph to pay
    (SEARCH_ORG_INDEX_MIN_CHUNKS) and some have graphs of their own. Then each of those
    walks its own (what a search of that agent alone does), and the rest are searched
    together: exactly while they are small. As one statement they were scanned
    exactly, every chunk of the large agents included (docs/benchmarks.md, "An
    organization's search walks its agents' own graphs")."""
    total = sum(a.total_chunks for a in agents)
    if len(agents) == 1 or total <= settings.SEARCH_EXACT_MAX_CHUNKS or total >= settings.SEARCH_ORG_INDEX_MIN_CHUNKS:
        return [(agents, everyone_but)]
    own = [a for a in agents if a.total_chunks >= settings.SEARCH_AGENT_INDEX_MIN_CHUNKS]
    if not own:
        return [(agents, everyone_but)]
    rest = [a for a in agents if a.total_chunks < settings.SEARCH_AGENT_INDEX_MIN_CHUNKS]
    # The rest by name, even in a search of everyone: "everyone but these" would read the
    # organization's rows, the large agents' included, and drop those.
    return [([agent], None) for agent in own] + ([(rest, None)] if rest else [])


class AgentRef(NamedTuple):
    """What search needs of an agent. A tuple: a search across an organization makes one
    per agent, and frozen dataclasses cost several times as much to build)."""

    id: int
    slug: str
    language: str
    total_chunks: int
    data_version: int
    vector_weight: float
    keyword_weight: float
    embedding_model: str
    # Its chunks' length in terms (AgentStats.total_terms): BM25's average chunk length.
    total_terms: int = 0


def agent_condition(agents: list[AgentRef], everyone_but: list[int] | None) -> tuple[str, list]:
    """`everyone_but`: set when `agents` are all the organization's searchable agents;
    the ids of its agents that hold chunks but must not be found (being deleted)."""
    if len(agents) == 1:
        # A constant agent_id lets the planner match a partial per-agent HNSW index.
        return "c.agent_id = %s", [agents[0].id]
    if everyone_but is not None:
        # No per-row agent test: a walk of the organization's graph skips nothing, which
        # is faster and finds more than filtering by a list of every agent.
        return ("NOT (c.agent_id = ANY(%s))", [everyone_but]) if everyone_but else ("TRUE", [])
    return "c.agent_id = ANY(%s)", [[a.id for a in agents]]
