"""How long data is kept, and the one scheduled task that enforces it (tenants.tasks.enforce_retention).

Each kind of data is a `Rule`: a tenant table, the column its age is read from, a default
number of days (a setting) and the Organization column that overrides it per organization
(empty: the default; 0: kept forever), or none (the activity history's hours: the setting
for every organization, and the site's rows name none). Apps register their rules at
startup (their AppConfig.ready), as they register their deletion steps in core.cleanup:
tenants the audit events, knowledge finished jobs and activity hours, search access rows.
What is not a table row (knowledge's export files on disk) registers a `hook`, called once
per run with the time. No other schedule removes data for its age.

Rows go in batches, cross-tenant (db.unscoped("retention")), one transaction each:

    DELETE FROM t WHERE id = ANY(ARRAY(SELECT t.id ... older than its organization's cutoff LIMIT n))

the bounded form of the deletion jobs (knowledge/services/deletion_steps.py). A run stops
a rule after LORE_RETENTION_MAX_BATCHES batches; the next run goes on. The organization is
a LEFT JOIN: the rows of an erased organization (its audit events) follow the default.
Audit events are append-only (tenants/models.py): their batches declare
`lore.audit_retention`, which the table's trigger requires of a DELETE.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from core import db

logger = logging.getLogger(__name__)

AUDIT_SETTING = "lore.audit_retention"


@dataclass(frozen=True)
class Rule:
    name: str  # what the run reports, e.g. "audit_events"
    table: str
    time_column: str
    setting: str  # the settings' name of the default days
    org_field: str  # the Organization column that overrides it; "": none (the setting for all)
    where: str = ""  # a further condition on the table's rows (alias t), e.g. finished jobs only
    append_only: bool = False  # the audit table: its DELETE needs AUDIT_SETTING


_rules: dict[str, Rule] = {}
_hooks: dict[str, Callable] = {}


def register(rule: Rule) -> None:
    _rules[rule.name] = rule


def register_hook(name: str, hook: Callable) -> None:
    """`hook(now=...) -> int` removes what it keeps outside the database (files) and says
    how many; e.g. the exports' files under LORE_DATA_DIR/exports past EXPORT_TTL."""
    _hooks[name] = hook


def enforce(*, now=None, batch_size: int | None = None, max_batches: int | None = None) -> dict[str, int]:
    """Every rule's rows past their retention, and every hook: {name: removed}."""
    now = now or timezone.now()
    batch_size = batch_size or settings.LORE_RETENTION_BATCH_SIZE
    max_batches = max_batches or settings.LORE_RETENTION_MAX_BATCHES
    removed = {}
    for rule in _rules.values():
        removed[rule.name] = 0
        for _ in range(max_batches):
            rows = _batch(rule, now=now, batch_size=batch_size)
            removed[rule.name] += rows
            if rows < batch_size:
                break
    for name, hook in _hooks.items():
        removed[name] = hook(now=now)
    if any(removed.values()):
        logger.info("retention: removed %s", removed)
    return removed


def _batch(rule: Rule, *, now, batch_size: int) -> int:
    default = getattr(settings, rule.setting)
    if rule.org_field:
        days, join = f"coalesce(o.{rule.org_field}, %s)", " LEFT JOIN tenants_organization o ON o.id = t.organization_id"
    else:  # no override (or no organization: the site's rows): the setting
        days, join = "%s::int", ""
    # Each table's (organization, ..., time) index: per organization, its rows older than its cutoff.
    statement = (
        f"DELETE FROM {rule.table} WHERE id = ANY(ARRAY(SELECT t.id FROM {rule.table} t{join}"
        f" WHERE {days} > 0 AND t.{rule.time_column} < %s::timestamptz - make_interval(days => {days})"
        + (f" AND {rule.where}" if rule.where else "")
        + " LIMIT %s))"
    )  # fmt: skip
    with db.unscoped("retention: every organization's rows past their retention") as sql:
        if rule.append_only:
            sql.execute("SELECT set_config(%s, 'on', true)", [AUDIT_SETTING])
        return sql.rowcount(statement, [default, now, default, batch_size])


def retention_days(org, rule_name: str) -> int:
    """The days `org` keeps a rule's rows (0: forever)."""
    rule = _rules[rule_name]
    own = getattr(org, rule.org_field) if rule.org_field else None
    return getattr(settings, rule.setting) if own is None else own
