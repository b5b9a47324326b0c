"""Row-level security in migrations: every tenant table gets the same policy.

A migration that creates a tenant table (one with organization_id) adds
`TenantRowSecurity("<table>")` after it; tests/core/test_row_security.py fails for a
tenant table without it. A data migration touching tenant rows is an `UnscopedRunSQL`
(or runs its statements in `db.unscoped(...)`, core/db.py): the migration's own connection
is subject to the policies.
"""

from django.conf import settings
from django.db import migrations

from core.db import ORG_SETTING

POLICY = "tenant_isolation"
# nullif: once a transaction-local value has come and gone, current_setting() answers ''
# in that session, not NULL, and ''::bigint would raise. No declaration, no rows.
PREDICATE = f"organization_id = nullif(current_setting('{ORG_SETTING}', true), '')::bigint"


class TenantRowSecurity(migrations.RunSQL):
    """Policies on `table`, forced on its owner too (the application role owns the tables)."""

    def __init__(self, table: str):
        super().__init__(
            sql=[
                f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
                f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY",
                f"CREATE POLICY {POLICY} ON {table} USING ({PREDICATE}) WITH CHECK ({PREDICATE})",
            ],
            reverse_sql=[
                f"DROP POLICY IF EXISTS {POLICY} ON {table}",
                f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY",
                f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY",
            ],
        )


class BypassRolePrivileges(migrations.RunPython):
    """The bypass role (settings.LORE_DB_BYPASS_ROLE) may do what the application does, on
    every table, now and later: a cross-tenant transaction runs as that role."""

    def __init__(self):
        super().__init__(self.grant, migrations.RunPython.noop)

    @staticmethod
    def grant(apps, schema_editor):
        role = schema_editor.quote_name(settings.LORE_DB_BYPASS_ROLE)
        for statement in (
            f"GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public TO {role}",
            f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {role}",
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON TABLES TO {role}",
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {role}",
        ):
            schema_editor.execute(statement)


class UnscopedRunSQL(migrations.RunPython):
    """A data migration's SQL over every organization's rows, as the bypass role for the
    statement only (the migration's transaction goes on as the owner, for its DDL)."""

    def __init__(self, sql: str):
        self.sql = sql
        super().__init__(self.run, migrations.RunPython.noop)

    def run(self, apps, schema_editor):
        schema_editor.execute(f"SET LOCAL ROLE {schema_editor.quote_name(settings.LORE_DB_BYPASS_ROLE)}")
        try:
            for statement in filter(None, (part.strip() for part in self.sql.split(";"))):
                schema_editor.execute(statement)
        finally:
            schema_editor.execute("RESET ROLE")
