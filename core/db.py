r"""The one way to run SQL on tenant tables, and the organization PostgreSQL enforces.

Every tenant table has a row-level-security policy (core.migrations_rls) that admits only
rows of the organization the transaction declared:

    organization_id = nullif(current_setting('lore.organization_id', true), '')::bigint

No declaration, no rows: a statement that forgets its organization predicate reads and
writes nothing of anyone. The declaration is transaction-local (set_config(..., true)),
so it also holds behind a transaction-mode pooler, and two scopes exist:

    with db.tenant(org) as sql:           # one organization's rows
        sql.execute("SELECT ... FROM knowledge_chunk c WHERE c.organization_id = {org} AND ...", [...])

    with db.unscoped("why") as sql:       # cross-tenant maintenance: greppable, like .unscoped
        sql.execute("SELECT ... FROM knowledge_ingestionjob WHERE status = %s", [...])

`tenant(org)` declares the organization and binds `{org}` in every statement to it, so a
statement or a fragment of one (search's filters, a KeyJoin) never carries an organization
id of its own: it is written with `{org}` and bound where it runs. Index choices still need the predicate
(every tenant index leads with organization_id); the policy is the second line.

`unscoped(...)` switches the transaction to the role named by LORE_DB_BYPASS_ROLE (BYPASSRLS),
for what is cross-tenant by nature: the API key lookup (the key decides the tenant),
claiming jobs fairly across organizations, admin pages, management commands, scheduled
maintenance. Its `reason` says why, and `grep -rn "db.unscoped("` lists every one.

Both open a transaction (or a savepoint inside one) and leave the connection's scope as
they found it. `tenant(org, atomic=False)` outside a transaction opens none: each statement
carries its declaration with it, in one round trip (search, which has no request
transaction: tenants.api.OrgAPIView.request_transaction). Inside a transaction already declared for the same organization (an API
request, see core.views) `tenant(org)` adds nothing: no savepoint, no statement. Which
scope the current transaction holds is tracked on the connection (config/postgresql/base.py)
and forgotten when the transaction ends.
"""

import re
from contextlib import contextmanager

from django.conf import settings
from django.db import connection, transaction
from django.db.backends.signals import connection_created

ORG_SETTING = "lore.organization_id"
BYPASS = "bypass"


class UnscopedSQLError(RuntimeError):
    pass


_SLOT = re.compile(r"%%|%[sb]|\{org\}")


def bind(text: str, params, org_id: int | None) -> tuple[str, list]:
    """`text` with each {org} turned into a placeholder for `org_id`, and the values in order."""
    if "{org}" not in text:
        return text, params if isinstance(params, dict) else list(params)
    if org_id is None:
        raise UnscopedSQLError("a statement with {org} runs only in db.tenant(org)")
    if isinstance(params, dict):
        return text.replace("{org}", "%(lore_org)s"), {**params, "lore_org": org_id}
    values, given = [], iter(params)

    def slot(match):
        token = match.group(0)
        if token == "{org}":
            values.append(org_id)
            return "%s"
        if token != "%%":
            values.append(next(given))
        return token

    text = _SLOT.sub(slot, text)
    values.extend(given)  # more values than slots: let the driver say so
    return text, values


class BoundCursor:
    """A cursor whose statements are bound to the scope's organization ({org}). With
    `declaring`, each statement carries its organization's declaration itself (tenant(org,
    atomic=False) outside a transaction)."""

    def __init__(self, cursor, org_id: int | None, declaring: bool = False):
        self._cursor, self.org_id, self._declaring = cursor, org_id, declaring

    def execute(self, text, params=()):
        text, params = bind(text, params, self.org_id)
        if self._declaring:
            text, params = declaring(text, params, self.org_id)
        return self._cursor.execute(text, params)

    def __getattr__(self, name):  # fetchone, fetchall, rowcount, description, ...
        return getattr(self._cursor, name)


class Scope:
    """What a `with db.tenant(...)` / `db.unscoped(...)` block yields: cursors bound to it."""

    def __init__(self, org_id: int | None, declaring: bool = False):
        self.org_id, self.declaring = org_id, declaring

    @contextmanager
    def cursor(self, *, binding: bool = False, prepared: bool = False, binary_results: bool = False):
        """Django's cursor, or with `binding` a server-binding one (config/postgresql/base.py)."""
        raw = (
            connection.binding_cursor(prepared=prepared, binary_results=binary_results)
            if binding or prepared or binary_results
            else connection.cursor()
        )
        with raw as cursor:
            yield BoundCursor(cursor, self.org_id, self.declaring)

    def execute(self, text, params=()) -> None:
        with self.cursor() as cursor:
            cursor.execute(text, params)

    def fetchall(self, text, params=(), **options) -> list:
        with self.cursor(**options) as cursor:
            cursor.execute(text, params)
            return cursor.fetchall()

    def fetchone(self, text, params=(), **options):
        with self.cursor(**options) as cursor:
            cursor.execute(text, params)
            return cursor.fetchone()

    def rowcount(self, text, params=()) -> int:
        with self.cursor() as cursor:
            cursor.execute(text, params)
            return cursor.rowcount


def _org_id(org) -> int:
    org_id = getattr(org, "pk", org)
    if not isinstance(org_id, int) or isinstance(org_id, bool) or org_id <= 0:
        raise UnscopedSQLError("db.tenant() needs a saved organization")
    return org_id


def tenant(org, *, atomic: bool = True):
    """A transaction (or savepoint) declared for `org`; see the module docstring.

    `atomic=False`, for reads on a request path that has no transaction (search): outside
    a transaction every statement carries the declaration with it instead (BoundCursor),
    one round trip each and no BEGIN or COMMIT, so statements of the block do not share a
    transaction. Inside one it is tenant(org)."""
    org_id = _org_id(org)
    if atomic or connection.in_atomic_block:
        return _scoped(org_id)
    return _each_statement(org_id)


@contextmanager
def _each_statement(org_id: int):
    yield Scope(org_id, declaring=True)


_READ = re.compile(r"\s*(SELECT|WITH)\b", re.IGNORECASE)


def declaring(text: str, params, org_id: int) -> tuple[str, list]:
    """The read `text` as one statement that first declares `org_id`, for a statement that
    runs outside a transaction: the declaration is transaction-local, so it holds for this
    statement's implicit transaction and ends with it. One round trip, no BEGIN or COMMIT.

    The statement runs inside a LATERAL subquery of the one-row declaration. A nested loop
    reads its outer row first, so set_config() has run before any node of the statement
    runs: the policy's one-time filters and scans, CTEs and InitPlans inside it are all
    evaluated after it. The subquery refers to the declaration (lateral, so the planner
    must put it inside such a loop) and OFFSET 0 keeps it from being flattened into the
    outer query (which would drop that reference). The rows come out in the statement's
    own order. Had the declaration not run first, the policies would admit no row: an
    empty answer, never another organization's rows (tests/core/test_row_security.py)."""
    if not _READ.match(text):
        raise UnscopedSQLError("a statement declaring its organization itself is a read (SELECT or WITH)")
    wrapped = (
        f"SELECT q.* FROM (SELECT set_config('{ORG_SETTING}', %s, true) AS org) lore_scope"
        f" CROSS JOIN LATERAL (SELECT * FROM ({text}) q WHERE lore_scope.org IS NOT NULL OFFSET 0) q"
    )
    if isinstance(params, dict):
        return wrapped.replace("set_config('" + ORG_SETTING + "', %s", "set_config('" + ORG_SETTING + "', %(lore_scope)s", 1), {**params, "lore_scope": str(org_id)}
    return wrapped, [str(org_id), *params]


def unscoped(reason: str):
    """A transaction (or savepoint) that bypasses row-level security: cross-tenant work.
    `reason` is for the reader (and grep); it is not sent anywhere."""
    if not reason:
        raise UnscopedSQLError("db.unscoped() needs a reason")
    return _scoped(BYPASS)


_KEEP = object()


def transaction_declared_later():
    """A transaction (or savepoint) whose scope a statement inside it declares (an API
    request: declaring_lookup); like tenant() and unscoped() it leaves the connection's
    scope as it found it."""
    return _scoped(_KEEP)


@contextmanager
def _scoped(target):
    conn = connection
    if conn.in_atomic_block and conn.lore_scope == target:
        yield Scope(None if target == BYPASS else target)
        return
    with transaction.atomic():
        outer = conn.lore_scope
        if target is not _KEEP:
            apply(target)
        try:
            yield Scope(None if target in (BYPASS, _KEEP) else target)
        except BaseException:
            # The block's savepoint (or the transaction) is rolled back on the way out,
            # and with it the declaration made inside it.
            conn.lore_scope = outer
            raise
        if conn.needs_rollback:
            conn.lore_scope = outer  # set_rollback(True): as for an exception
        elif conn.lore_scope != outer and len(conn.atomic_blocks) > 1:
            apply(outer)  # nested: the enclosing block goes on in its own scope


@contextmanager
def untenanted(reason: str):
    """Statements on no tenant table (the catalog, an advisory lock, a text's lexemes), in
    whatever transaction and scope the connection is: nothing to declare."""
    if not reason:
        raise UnscopedSQLError("db.untenanted() needs a reason")
    yield Scope(None)


def declaring_lookup(reason: str, text: str, params, *, org_column: str, prepared: bool = False):
    """The one lookup that decides the tenant (an API key): `text` reads the row through a
    SECURITY DEFINER function owned by the bypass role that declares the row's
    organization (tenants/migrations/0007), so the lookup needs no bypass of its own: one
    statement, one round trip. Inside a transaction (an API request that has one) the
    declaration holds for the rest of it, and the statement also ends a test session's
    bypass for it (`role`); outside one it ends with the statement. The row, or None."""
    if not reason:
        raise UnscopedSQLError("db.declaring_lookup() needs a reason")
    declare = f"SELECT {org_column}, set_config('role', 'none', true), "
    with connection.binding_cursor(prepared=prepared) as cursor:
        cursor.execute(declare + text.removeprefix("SELECT "), params)
        row = cursor.fetchone()
    if row is None:
        return None
    if connection.in_atomic_block:
        connection.lore_scope = row[0]
    return row[2:]


def apply(target) -> None:
    """Declares `target` (an organization id, BYPASS, or None for nothing) for the current
    transaction, in one statement. Only inside an atomic block: outside one, a
    transaction-local setting would end with the statement that set it."""
    conn = connection
    if not conn.in_atomic_block:
        raise UnscopedSQLError("a scope is declared inside a transaction")
    # None: the session's own role (the login role; a test session bypasses, tests/conftest.py).
    role = settings.LORE_DB_BYPASS_ROLE if target == BYPASS or (target is None and conn.lore_session_bypass) else "none"
    org = "" if target in (None, BYPASS) else str(target)
    with conn.cursor() as cursor:
        cursor.execute("SELECT set_config('role', %s, true), set_config(%s, %s, true)", [role, ORG_SETTING, org])
    conn.lore_scope = target


def bypass_every_session() -> None:
    """For a process whose own statements are maintenance throughout (the test suite, a
    benchmark's loader): every connection it opens runs as the bypass role for the whole
    session; scopes still declare theirs (tenant() switches back to the login role, under
    the policies). Never in a server process: a session's role would outlive its
    transaction behind a transaction-mode pooler."""
    connection_created.connect(_session_bypass)
    if connection.connection is not None:
        _session_bypass(None, connection)


def stop_bypassing_sessions() -> None:
    connection_created.disconnect(_session_bypass)
    if connection.connection is not None and connection.lore_session_bypass:
        with connection.cursor() as cursor:
            cursor.execute("RESET ROLE")
    connection.lore_session_bypass = False


def _session_bypass(sender, connection, **kwargs):
    with connection.cursor() as cursor:
        cursor.execute(f"SET ROLE {settings.LORE_DB_BYPASS_ROLE}")
    connection.lore_session_bypass = True


def ddl(statement: str) -> None:
    """A schema change the application makes itself (search's partial indexes, built
    CONCURRENTLY, so outside any transaction) as the login role, which owns the tables.
    Not a tenant statement: nothing is read or written under a policy."""
    conn = connection
    if conn.in_atomic_block:
        raise UnscopedSQLError("db.ddl() runs outside transactions (CONCURRENTLY)")
    with conn.cursor() as cursor:
        if conn.lore_session_bypass:  # a test session: back to the owner for the statement
            cursor.execute("RESET ROLE")
        try:
            cursor.execute(statement)
        finally:
            if conn.lore_session_bypass:
                cursor.execute(f"SET ROLE {settings.LORE_DB_BYPASS_ROLE}")
