"""The API key lookup as a function that bypasses row-level security and declares the
key's organization (tenants/auth.py, core/db.py `declaring_lookup`).

An API request's first statement must read the key before any organization is declared:
as the bypass role. Switching to that role is a statement of its own (and a transaction
around both); a SECURITY DEFINER function owned by the bypass role runs the lookup as that
role inside the request's one statement instead. It returns the key only when it is usable
(its hash matches, not revoked or expired, its organization active) and only then declares
its organization, transaction-locally: for the rest of that statement (the row read with
the key, tenants.auth.KeyJoin) and, inside a transaction, for the rest of it.

Nothing else runs as the bypass role through it: its statement is fixed, EXECUTE is the
application role's alone, and search_path is pinned (the usual SECURITY DEFINER care).
"""

from django.conf import settings
from django.db import migrations

from core.db import ORG_SETTING

FUNCTION = "lore_api_key(text, text, timestamptz)"


def create(apps, schema_editor):
    role = schema_editor.quote_name(settings.LORE_DB_BYPASS_ROLE)
    for statement in (
        f"""
        CREATE OR REPLACE FUNCTION lore_api_key(key_prefix text, hash text, at timestamptz)
        RETURNS SETOF tenants_apikey
        LANGUAGE plpgsql VOLATILE SECURITY DEFINER ROWS 1
        SET search_path = pg_catalog, public
        AS $$
        DECLARE
            found_key tenants_apikey;
        BEGIN
            -- tenants_apikey_prefix_key (unique): one row at most.
            SELECT k.* INTO found_key FROM tenants_apikey k JOIN tenants_organization o ON o.id = k.organization_id
            WHERE k.prefix = key_prefix AND k.key_hash = hash AND k.revoked_at IS NULL
              AND (k.expires_at IS NULL OR k.expires_at > at) AND o.is_active;
            IF FOUND THEN
                PERFORM set_config('{ORG_SETTING}', found_key.organization_id::text, true);
                RETURN NEXT found_key;
            END IF;
        END
        $$
        """,
        # The owner's role is the one the body runs as. Owning a function takes CREATE on
        # its schema; the bypass role is given nothing else here.
        f"GRANT CREATE ON SCHEMA public TO {role}",
        f"ALTER FUNCTION {FUNCTION} OWNER TO {role}",
        f"REVOKE ALL ON FUNCTION {FUNCTION} FROM PUBLIC",
        f"GRANT EXECUTE ON FUNCTION {FUNCTION} TO SESSION_USER",
    ):
        schema_editor.execute(statement)


def drop(apps, schema_editor):
    schema_editor.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}")


class Migration(migrations.Migration):
    dependencies = [("tenants", "0006_organization_activity_export_retention")]

    operations = [migrations.RunPython(create, drop)]
