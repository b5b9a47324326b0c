"""Search: one ranked list from one agent or many, by meaning, keywords or both."""

import hashlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field

import numpy as np
from django.conf import settings

from knowledge.embeddings import get_provider
from search import caching, engine, tracking
from search.caching import TwoTierCache
from search.engine import AgentSelection
from tenants.models import Organization

MODES = ("hybrid", "vector", "keyword")

query_embeddings = TwoTierCache("qemb", size=settings.SEARCH_EMBEDDING_LRU_SIZE, ttl=settings.SEARCH_EMBEDDING_TTL)
result_cache = TwoTierCache("results", size=settings.SEARCH_RESULT_LRU_SIZE, ttl=settings.SEARCH_RESULT_TTL)


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
        and the key is known before the agents are read (search_prefetch)."""
        normalized = {**asdict(self), "query": " ".join(self.query.split())}
        return hashlib.sha256(json.dumps([org_id, scope, normalized], sort_keys=True).encode()).hexdigest()


def _query_key(model: str, text: str) -> str:
    return f"{model}:{settings.EMBEDDING_DIMENSIONS}:{hashlib.sha256(text.encode()).hexdigest()}"


def _query_vectors(models: list[str], text: str, cached: list) -> dict[str, np.ndarray]:
    """The query's embedding per model: from the cache where it was (`cached`, as
    caching.get_many found them), from the provider (then cached) for the rest."""
    vectors = {}
    for model, raw in zip(models, cached):
        if raw is not None:
            vectors[model] = np.frombuffer(raw, dtype=np.float16).astype(np.float32)
        else:
            vectors[model] = get_provider(model).embed([text])[0]
            query_vector_put(model, text, vectors[model])
    return vectors


def query_vector_put(model: str, text: str, vector) -> None:
    """Caches a query's embedding (bench/search.py puts precomputed ones here)."""
    query_embeddings.set(_query_key(model, text), np.asarray(vector, dtype=np.float16).tobytes())


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
        entries += [(query_embeddings, _query_key(model, request.query)) for model in models]
    return caching.SharedRead([tier.full_key(key) for tier, key in entries if not tier.held(key)])


def search(
    *, org: Organization, selection: AgentSelection, request: SearchRequest, scope: tuple,
    caller: str | None = None, read: dict | None = None,
) -> dict:
    """`scope`: the agents as the caller named them (("agent", slug); ("agents", slugs or
    None for all)). `read`: what search_prefetch's read found, for `caller`."""
    started = time.perf_counter()
    filters = engine.filters_sql(org.pk, request.filters)  # validates, even when the answer is cached
    key = request.cache_key(org.pk, scope)
    # One shared-cache round trip (or none, after search_prefetch) for the result and, in
    # case it is missing or not current, the query's embedding for each model its agents use.
    models = list(selection.by_model) if request.mode != "keyword" else []
    found = caching.get_many([(result_cache, key)] + [(query_embeddings, _query_key(m, request.query)) for m in models], read)
    cached = found[0] is not None and found[0][0] == selection.versions
    if cached:
        results = found[0][1]
    else:
        results = _run(org, selection, request, filters, _query_vectors(models, request.query, found[1:]))
        result_cache.set(key, (selection.versions, results))
    took_ms = (time.perf_counter() - started) * 1000
    tracking.record(org_id=org.pk, results=results, agent_ids=selection.ids, latency_ms=took_ms, cache_hit=cached)
    if caller is not None:
        with _seen_lock:
            # A keyword search names no models: the caller's next search may still need them.
            _seen[(caller, scope)] = (org.pk, tuple(models) or _seen.get((caller, scope), (0, ()))[1])
            _seen.move_to_end((caller, scope))
            if len(_seen) > _SEEN_SIZE:
                _seen.popitem(last=False)
    return {
        "results": [{k: v for k, v in r.items() if not k.startswith("_")} for r in results],
        "mode": request.mode,
        "took_ms": round(took_ms, 3),
        "cached": cached,
    }


def _run(org, selection: AgentSelection, request, filters, vectors: dict[str, np.ndarray]) -> list[dict]:
    agents = selection.agents
    if not agents:
        return []
    limit = request.limit
    depth = max(limit, settings.SEARCH_HYBRID_CANDIDATES) if request.mode == "hybrid" else limit
    # A vector-only search takes its result rows from the vector statement: one round trip.
    rows = {} if request.mode == "vector" else None
    vector_hits, keyword_hits = _candidates(org, selection, request, filters, vectors, depth, rows)
    scores: dict[int, float] = {}
    if request.mode == "vector":
        scores = {cid: 1.0 - float(d) for cid, d in vector_hits}
    elif request.mode == "keyword":
        scores = {cid: float(r) for cid, r in keyword_hits}
    else:
        weights = _weights(agents, request)
        k = settings.SEARCH_RRF_K
        # Reciprocal rank fusion: scores of the two lists are not comparable, ranks are.
        for rank, (cid, _) in enumerate(vector_hits, start=1):
            scores[cid] = scores.get(cid, 0.0) + weights["vector"] / (k + rank)
        for rank, (cid, _) in enumerate(keyword_hits, start=1):
            scores[cid] = scores.get(cid, 0.0) + weights["keyword"] / (k + rank)
    # Rounded before filtering and ordering, so min_score and ties see the scores callers see.
    ranked = sorted(((cid, round(s, 6)) for cid, s in scores.items()), key=lambda item: (-item[1], item[0]))
    if request.min_score is not None:
        ranked = [(cid, s) for cid, s in ranked if s >= request.min_score]
    ranked = ranked[:limit]
    if rows is None:
        rows = engine.fetch_chunks(org_id=org.pk, ids=[cid for cid, _ in ranked], include_parent=request.include_parent)
    slugs = selection.slug_by_id
    results = []
    for cid, score in ranked:
        row = rows.get(cid)
        # Deleted between ranking and fetching; or, in a search over everyone but a few
        # agents, an agent created after they were read (not one of those searched).
        if row is None or row["_agent_id"] not in slugs:
            continue
        result = {**row, "agent": slugs[row["_agent_id"]], "score": score, "_chunk_id": cid}
        parent_text = result.pop("_parent_text")
        if request.include_parent:
            result["parent_text"] = parent_text
        results.append(result)
    if request.chunk_context:
        _add_context(org, results, request.chunk_context)
    return results


def _candidates(org, selection: AgentSelection, request, filters, vectors, depth, rows):
    """(vector hits, keyword hits) of the mode's kinds: (chunk id, distance) nearest first,
    (chunk id, rank) best first, `depth` of each. With `rows` (a dict), the vector
    statements also read the result rows and put them in it. Every first statement goes
    out in one round trip. Before it, the keyword statement may read from PostgreSQL, in
    one statement: the question's terms when its text is new to this process, and for a
    long question over a large scope, which of them the scope holds (engine._terms_present).
    An HNSW answer shorter than `depth` is then redone exactly."""
    plans = []
    if request.mode in ("vector", "hybrid"):
        # Distances are only comparable within one embedding model: each model's agents
        # are searched with that model's query vector, then merged by distance.
        for model, group in selection.by_model.items():
            plans.append(engine.vector_statements(
                org_id=org.pk, agents=group, vector=vectors[model], k=depth, filters=filters,
                everyone_but=selection.everyone_but if len(group) == len(selection.agents) else None,
                rows=rows is not None, include_parent=request.include_parent,
            ))  # fmt: skip
    keyword = []
    if request.mode in ("keyword", "hybrid"):
        keyword = [engine.keyword_statement(
            org_id=org.pk, agents=selection.agents, query=request.query, k=depth, filters=filters,
            everyone_but=selection.everyone_but,
        )]  # fmt: skip
    firsts = engine.fetch_together([plan[0] for plan in plans] + keyword)
    vector_hits = []
    for plan, first in zip(plans, firsts):
        found = engine.nearest(plan, depth, first=first)
        if rows is not None:
            found = engine.with_rows(found)
            rows.update((cid, row) for cid, _, row in found)
        vector_hits += [(cid, distance) for cid, distance, *_ in found]
    vector_hits = sorted(vector_hits, key=lambda hit: hit[1])[:depth]
    return vector_hits, (firsts[-1] if keyword else [])


def _weights(agents, request) -> dict:
    if request.weights:
        return {"vector": request.weights.get("vector", 1.0), "keyword": request.weights.get("keyword", 1.0)}
    if len(agents) == 1:
        return {"vector": agents[0].vector_weight, "keyword": agents[0].keyword_weight}
    return {"vector": 1.0, "keyword": 1.0}


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
