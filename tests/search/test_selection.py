"""How a vector search of several agents is split into statements (search.selection.vector_parts)."""

import pytest

from search.selection import AgentRef, AgentSelection, vector_parts


def _agent(id_, chunks):
    return AgentRef(id_, f"a{id_}", "english", chunks, 1, 1.0, 1.0, "m")


@pytest.fixture
def sizes(settings):
    settings.SEARCH_EXACT_MAX_CHUNKS = 5000
    settings.SEARCH_AGENT_INDEX_MIN_CHUNKS = 5001
    settings.SEARCH_ORG_INDEX_MIN_CHUNKS = 10000


def test_agents_with_their_own_graph_walk_it_and_the_rest_are_searched_together(sizes):
    big, small, smaller = _agent(1, 5467), _agent(2, 2283), _agent(3, 10)
    assert vector_parts([big, small, smaller], None) == [([big], None), ([small, smaller], None)]
    # A whole organization's rest by name: not its rows less the large agents'.
    assert vector_parts([big, small, smaller], [9]) == [([big], None), ([small, smaller], None)]
    assert AgentSelection([big, small, smaller]).strategy == "agent_graph"


@pytest.mark.parametrize(
    "chunks",
    [
        [5467],  # one agent: its own statement already
        [3000, 1000],  # small enough together for one exact scan
        [4000, 3000],  # too large for that, but nobody has a graph of their own
        [6000, 5000],  # an organization's graph pays: one walk of it
    ],
)
def test_otherwise_one_statement(sizes, chunks):
    agents = [_agent(i, n) for i, n in enumerate(chunks, 1)]
    assert vector_parts(agents, None) == [(agents, None)]


def test_only_agents_with_graphs_nothing_left_over(sizes, settings):
    settings.SEARCH_ORG_INDEX_MIN_CHUNKS = 20000
    one, two = _agent(1, 5001), _agent(2, 5002)
    assert vector_parts([one, two], []) == [([one], None), ([two], None)]
