"""Agents and their configuration."""

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from core.errors import Conflict
from knowledge.models import FTS_LANGUAGES, Agent, AgentStats
from knowledge.services.stats import stats_apply
from tenants.models import Organization, slug_validator

class AgentExists(Conflict):
    """The slug is taken by a live agent of the organization (a conflict with what is
    stored, not a malformed request)."""

    def __init__(self, message: str):
        super().__init__("already_exists", message, {"slug": [message]})


CONFIG_LIMITS = {
    "chunk_size": (100, 8000),
    "chunk_overlap": (0, 4000),
    "parent_chunk_size": (0, 32000),
    "vector_weight": (0.0, 10.0),
    "keyword_weight": (0.0, 10.0),
}
CONFIG_KEYS = ("chunk_size", "chunk_overlap", "parent_chunk_size", "embedding_model", "language", "vector_weight", "keyword_weight")
SEARCH_KEYS = ("embedding_model", "language", "vector_weight", "keyword_weight")


def agent_config_validate(config: dict, *, current: dict | None = None) -> dict:
    """The full config that results from applying `config` over `current` (or the
    defaults); ValidationError names each bad field as "config.<name>"."""
    errors = {}
    for key in config:
        if key not in CONFIG_KEYS:
            errors[f"config.{key}"] = [f"Unknown config key. Allowed: {', '.join(CONFIG_KEYS)}."]
    merged = {**(current or _default_config()), **{k: v for k, v in config.items() if k in CONFIG_KEYS}}
    for key, (low, high) in CONFIG_LIMITS.items():
        value = merged[key]
        kind = float if isinstance(low, float) else int
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
            errors[f"config.{key}"] = [f"Must be {'a number' if kind is float else 'an integer'}."]
        elif not low <= value <= high:
            errors[f"config.{key}"] = [f"Must be between {low} and {high}."]
    if not errors:
        if merged["chunk_overlap"] * 2 > merged["chunk_size"]:
            errors["config.chunk_overlap"] = ["Must be at most half of chunk_size."]
        if merged["parent_chunk_size"] and merged["parent_chunk_size"] < merged["chunk_size"]:
            errors["config.parent_chunk_size"] = ["Must be 0 (no parents) or at least chunk_size."]
    if merged["language"] not in FTS_LANGUAGES:
        errors["config.language"] = [f"Unknown language. Allowed: {', '.join(FTS_LANGUAGES)}."]
    if not isinstance(merged["embedding_model"], str) or not 0 < len(merged["embedding_model"]) <= 100:
        errors["config.embedding_model"] = ["Must be a model name of 1 to 100 characters."]
    if errors:
        raise ValidationError(errors)
    return merged


def agent_settings(agent: Agent) -> dict:
    """Its name and config, as an audit event's before and after compare them."""
    return {"name": agent.name, **{key: getattr(agent, key) for key in CONFIG_KEYS}}


def _default_config() -> dict:
    return {key: Agent._meta.get_field(key).get_default() for key in CONFIG_KEYS}


def agent_create(*, org: Organization, slug: str, name: str = "", config: dict | None = None) -> Agent:
    errors = {}
    try:
        slug_validator(slug)
    except ValidationError as exc:
        errors["slug"] = exc.messages
    try:
        values = agent_config_validate(config or {})
    except ValidationError as exc:
        errors.update(exc.message_dict)
    if errors:
        raise ValidationError(errors)
    try:
        with transaction.atomic():
            agent = Agent.objects.for_org(org).create(slug=slug, name=name or slug, **values)
            AgentStats.objects.for_org(org).create(agent=agent)
            stats_apply(org=org, agents=1)
    except IntegrityError as exc:
        raise AgentExists(f"Agent '{slug}' already exists in this organization.") from exc
    return agent


@transaction.atomic
def agent_update(*, org: Organization, agent: Agent, name: str | None = None, config: dict | None = None) -> Agent:
    """Changing the chunking config takes effect on each document's next ingest
    (its ingest_hash no longer matches, so it is re-chunked). Changing what ranks or
    parses a search (weights, language, model) bumps data_version: cached results of the
    old settings are never served."""
    agent = Agent.objects.for_org(org).select_for_update().get(pk=agent.pk)
    before = {k: getattr(agent, k) for k in SEARCH_KEYS}
    if config:
        values = agent_config_validate(config, current={k: getattr(agent, k) for k in CONFIG_KEYS})
        for key, value in values.items():
            setattr(agent, key, value)
    if name is not None:
        agent.name = name
    agent.save()
    if {k: getattr(agent, k) for k in SEARCH_KEYS} != before:
        stats_apply(org=org, agent=agent)
    return agent
