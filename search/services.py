"""Search: one ranked list from one agent or many, by meaning, keywords or both."""

import hashlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, fields

import numpy as np
from django.conf import settings
from django.db import connection

from core import metrics as lore_metrics
from core import parallel
from knowledge import activity
from knowledge.embeddings import EmbeddingUnavailable, get_provider, provider_call
from search import caching, engine, keywords, tracking
from search.filters import filters_sql
from search.caching import TwoTierCache
from search.selection import AgentSelection
from tenants.models import Organization

MODES = ("hybrid", "vector", "keyword")

query_embeddings = TwoTierCache("qemb", size=settings.SEARCH_EMBEDDING_LRU_SIZE, ttl=settings.SEARCH_EMBEDDING_TTL)
result_cache = TwoTierCache("results", size=settings.SEARCH_RESULT_LRU_SIZE, ttl=settings.SEARCH_RESULT_TTL)
# Hybrid searches answered by keywords only: their query's embedding was unavailable.
metrics = {"degraded": 0}


@dataclass
class SearchRequest:
    query: str
    limit: int = 10
    mode: str = "hybrid"
    filters: dict = field(default_factory=dict)
    min_score: float | None = None
    include_parent: bool = False
    chunk_context: dict = field(default_factory=dict)  # {"before": n, "after": m}
    weights: dict = field(default_factory=dict)  # {"vector": w, "keyword": w}

    def cache_key(self, org_id: int, scope: tuple) -> str:
        """The result's key: organization, the agents asked for (`scope`, as the caller
        named them) and the request. The agents' data versions are stored with the result
        and compared on every read (search()): a cached result can be unused, never stale,
        and the key is known before the agents are read (search_prefetch). The hybrid
        fusion's version and vector weight are in it too: the shared tier outlives a deploy
        that changes them."""
        # Computed for search_prefetch and again for search(): kept for the same org and scope.
        memo = self.__dict__.get("_cache_key")
        if memo is not None and memo[0] == (org_id, scope):
            return memo[1]
        normalized = {**{f.name: getattr(self, f.name) for f in fields(self)}, "query": " ".join(self.query.split())}
        fusion = [engine.FUSION, settings.SEARCH_HYBRID_VECTOR_WEIGHT]
        key = hashlib.sha256(json.dumps([org_id, scope, normalized, fusion], sort_keys=True).encode()).hexdigest()
        self.__dict__["_cache_key"] = ((org_id, scope), key)
        return key


def _query_key(org_id: int, model: str, text: str) -> str:
    # Per organization, though the embedding is the same for all: a shared entry would
    # tell one organization (by took_ms) that another searched the same text.
    return f"{org_id}:{model}:{settings.EMBEDDING_DIMENSIONS}:{hashlib.sha256(text.encode()).hexdigest()}"


def _query_vectors(org_id: int, models: list[str], text: str, cached: list) -> dict[str, np.ndarray]:
    """The query's embedding per model: from the cache where it was (`cached`, as
    caching.get_many found them), from the provider (then cached) for the rest.
    Raises EmbeddingUnavailable when the provider cannot answer within the query timeout."""
    vectors = {}
    for model, raw in zip(models, cached):
        if raw is not None:
            vectors[model] = np.frombuffer(raw, dtype=np.float16).astype(np.float32)
        else:
            vectors[model] = provider_call(org_id=org_id, agent_id=None, call=lambda m=model: get_provider(m).embed_query(text))
            query_vector_put(org_id, model, text, vectors[model])
    return vectors


def query_vector_put(org_id: int, model: str, text: str, vector) -> None:
    """Caches a query's embedding (bench/search.py puts precomputed ones here)."""
    query_embeddings.set(_query_key(org_id, model, text), np.asarray(vector, dtype=np.float16).tobytes())


# (caller, scope) -> (organization id, embedding models) of the caller's last search of
# that scope: what search_prefetch needs before the caller's API key has been read. A
# guess, never trusted: keys it builds for another organization are never looked up.
_seen: OrderedDict = OrderedDict()
_seen_lock = threading.Lock()
_SEEN_SIZE = 10_000


def search_prefetch(*, caller: str, scope: tuple, request: SearchRequest) -> caching.SharedRead | None:
    """Sends, before the caller is authenticated, the shared-cache read that search() would
    make after: the result and the query embeddings, under the organization and models of
    the caller's last search of `scope`. None when there was none in this process."""
    seen = _seen.get((caller, scope))
    if seen is None:
        return None
    org_id, models = seen
    entries = [(result_cache, request.cache_key(org_id, scope))]
    if request.mode != "keyword":
        entries += [(query_embeddings, _query_key(org_id, model, request.query)) for model in models]
    return caching.SharedRead([tier.full_key(key) for tier, key in entries if not tier.held(key)])


def search(
    *, org: Organization, selection: AgentSelection, request: SearchRequest, scope: tuple,
    caller: str | None = None, read: dict | None = None, explain: bool = False,
) -> dict:
    """`scope`: the agents as the caller named them (("agent", slug); ("agents", slugs or
    None for all)). `read`: what search_prefetch's read found, for `caller`.

    When the query's embedding is unavailable (EmbeddingUnavailable: provider timed out,
    down, or its breaker open), a hybrid search answers by keywords alone, says so in
    `degraded` and is not cached; a vector search raises it. `explain` (the console's
    playground): each result also has `ranks`, its positions in the vector and keyword
    lists behind its score."""
    started = time.perf_counter()
    filters = filters_sql(request.filters)  # validates, even when the answer is cached
    key = request.cache_key(org.pk, scope)
    # One shared-cache round trip (or none, after search_prefetch) for the result and, in
    # case it is missing or not current, the query's embedding for each model its agents use.
    models = list(selection.by_model) if request.mode != "keyword" else []
    found = caching.get_many(
        [(result_cache, key)] + [(query_embeddings, _query_key(org.pk, m, request.query)) for m in models], read
    )
    cached = found[0] is not None and found[0][0] == selection.versions
    degraded = []
    if cached:
        results = found[0][1]
    else:
        try:
            vectors = _query_vectors(org.pk, models, request.query, found[1:])
        except EmbeddingUnavailable:
            if request.mode != "hybrid":
                activity.record(org_id=org.pk, errors=1)
                raise
            vectors, degraded = None, ["vector"]
            metrics["degraded"] += 1
            lore_metrics.search_degraded()
        with parallel.caller() as searching:
            # Helpers only while this search is (about) alone in its process: under load
            # every core is busy anyway, and its lists at once would only cost more CPU.
            alone = searching <= settings.SEARCH_PARALLEL_MAX_SEARCHES
            results = _run(org, selection, request, filters, vectors, alone=alone)
        if not degraded:
            # A degraded result would be served on after the provider is back.
            result_cache.set(key, (selection.versions, results))
    took_ms = (time.perf_counter() - started) * 1000
    strategy = "none" if cached or degraded or request.mode == "keyword" else selection.strategy
    lore_metrics.search_done(request.mode, strategy, cached, took_ms / 1000)
    tracking.record(org_id=org.pk, results=results, agent_ids=selection.ids, latency_ms=took_ms, cache_hit=cached)
    if caller is not None:
        with _seen_lock:
            # A keyword search names no models: the caller's next search may still need them.
            _seen[(caller, scope)] = (org.pk, tuple(models) or _seen.get((caller, scope), (0, ()))[1])
            _seen.move_to_end((caller, scope))
            if len(_seen) > _SEEN_SIZE:
                _seen.popitem(last=False)
    return {
        "results": [
            {k: v for k, v in r.items() if not k.startswith("_")} | ({"ranks": _ranks(r, i, request, degraded)} if explain else {})
            for i, r in enumerate(results, 1)
        ],
        "mode": request.mode,
        "took_ms": round(took_ms, 3),
        "cached": cached,
        "degraded": degraded,
    }


def _ranks(result: dict, position: int, request, degraded: list) -> dict:
    vector_rank, keyword_rank = result.get("_ranks", (None, None))
    if request.mode == "vector":
        return {"vector": position, "keyword": None}
    if request.mode == "keyword" or degraded:
        return {"vector": None, "keyword": position}
    return {"vector": vector_rank, "keyword": keyword_rank}


def _run(
    org, selection: AgentSelection, request, filters, vectors: dict[str, np.ndarray] | None, *, alone: bool = True
) -> list[dict]:
    """`vectors` None: a hybrid search without its query's embedding, fused from its
    keyword candidates alone, so a chunk scores as hybrid scores a chunk found by keywords
    only and the caller's min_score keeps its meaning."""
    agents = selection.agents
    if not agents:
        return []
    mode = request.mode
    depth = max(request.limit, settings.SEARCH_HYBRID_CANDIDATES) if mode == "hybrid" else request.limit
    vector = []
    if vectors is not None and mode in ("vector", "hybrid"):
        vector = [
            engine.vector_nearest(agents=part, vector=vectors[model], k=depth, filters=filters, everyone_but=but)
            for model, parts in selection.vector_parts.items()
            for part, but in parts
        ]
    # Over a large scope, the search's independent statements run at once on helpers'
    # connections: a hybrid search's vector half beside its keyword half, all but the last
    # of a vector search's parts (an organization's agents' own graphs) beside that one.
    # The vector half is one statement, its parts merged as in a search of one statement:
    # each part on a helper of its own made three statements at once on two cores, each
    # slower than the half as one (docs/benchmarks.md, session 16). The lists are then
    # fused here and a last statement reads the rows kept.
    beside = []
    if vector and (mode == "hybrid" or len(vector) > 1) and alone and _lists_at_once(agents):
        if mode == "hybrid":
            vector = [engine.vector_candidates(vector, depth)]
        for statement in vector if mode == "hybrid" else vector[:-1]:
            future = parallel.beside(engine.fetch_candidates, org_id=org.pk, statement=statement)
            if future is None:
                break  # no helper free: this thread reads the rest itself
            beside.append(future)
    try:
        keyword = None
        if mode in ("keyword", "hybrid"):
            # May read the question's terms first (one round trip, for a text new to this
            # process): the tiers of a large scope are built from them.
            keyword = keywords.keyword_statement(
                org_id=org.pk, agents=agents, query=request.query, k=depth, filters=filters, everyone_but=selection.everyone_but,
            )  # fmt: skip
        if beside:
            # This thread's own share: the keyword half, and the vector parts no helper took.
            keyword_rows = engine.fetch_candidates(org_id=org.pk, statement=keyword) if keyword is not None else None
            own = [engine.fetch_candidates(org_id=org.pk, statement=statement) for statement in vector[len(beside) :]]
            vector_rows = [future.result() for future in beside] + own
    except BaseException:
        for future in beside:
            future.cancel()  # those not started yet never run; a running statement ends as it would
        raise
    weights = _weights(agents, request)
    if beside:
        ranked = engine.fused(mode=mode, vector=vector_rows, keyword=keyword_rows, depth=depth, weights=weights)
        found = engine.fetch_rows(org_id=org.pk, ranked=ranked, limit=request.limit, include_parent=request.include_parent)
    else:
        found = engine.fetch_results(org_id=org.pk, statement=engine.search_statement(
            mode=mode, vector=vector, keyword=keyword, depth=depth, limit=request.limit,
            weights=weights, include_parent=request.include_parent,
        ))  # fmt: skip
    slugs = selection.slug_by_id
    results = []
    for cid, score, row in found:
        if request.min_score is not None and score < request.min_score:
            break  # best first: the rest score lower
        # In a search over everyone but a few agents, an agent created after they were
        # read (not one of those searched).
        if row["_agent_id"] not in slugs:
            continue
        result = {**row, "agent": slugs[row["_agent_id"]], "score": score, "_chunk_id": cid}
        parent_text = result.pop("_parent_text")
        if request.include_parent:
            result["parent_text"] = parent_text
        results.append(result)
    if request.chunk_context:
        _add_context(org, results, request.chunk_context)
    return results


def _lists_at_once(agents) -> bool:
    """Whether a search's statements may run at once, on several connections: over scopes
    of at least SEARCH_PARALLEL_MIN_CHUNKS (smaller ones' cost less than the last statement
    and the hand-over), and never inside a transaction, whose writes a helper's connection
    would not see."""
    return (
        sum(a.total_chunks for a in agents) >= settings.SEARCH_PARALLEL_MIN_CHUNKS
        and not connection.in_atomic_block
    )


def _weights(agents, request) -> dict:
    """A hybrid search's weights: the request's, else its one agent's, else 1 and 1; the
    vector half's times SEARCH_HYBRID_VECTOR_WEIGHT, which depends on the embedder's kind
    (config/settings/base.py), so an agent's or a request's weights say how much more or
    less than that default each half counts."""
    if request.weights:
        vector, keyword = request.weights.get("vector", 1.0), request.weights.get("keyword", 1.0)
    elif len(agents) == 1:
        vector, keyword = agents[0].vector_weight, agents[0].keyword_weight
    else:
        vector, keyword = 1.0, 1.0
    return {"vector": float(vector) * settings.SEARCH_HYBRID_VECTOR_WEIGHT, "keyword": float(keyword)}


def _add_context(org, results, context: dict) -> None:
    """Neighbouring chunks of each result's document, in document order. A chunk is
    shown once: never as context when it is a result itself, and only in the context
    of the best-ranked result whose window holds it."""
    before, after = context.get("before", 0), context.get("after", 0)
    spans = [(r["_document_id"], r["_ordinal"] - before, r["_ordinal"] + after) for r in results]
    neighbours = engine.fetch_neighbours(org_id=org.pk, spans=spans)
    seen = {(r["_document_id"], r["_ordinal"]) for r in results}
    for result, (doc, low, high) in zip(results, spans):
        items = []
        for n_doc, ordinal, key, text in neighbours:
            if n_doc == doc and low <= ordinal <= high and (n_doc, ordinal) not in seen:
                seen.add((n_doc, ordinal))
                position = "before" if ordinal < result["_ordinal"] else "after"
                items.append({"chunk_key": key, "position": position, "text": text})
        result["context"] = items
