"""Each organization's usage row (tenants.OrganizationUsage) from its agents' stats rows:
the quotas start from exact counts. Later writes move it with the stats (stats_apply)."""

from django.db import migrations

BACKFILL = """
INSERT INTO tenants_organizationusage (organization_id, agents, documents, chunks, bytes)
SELECT o.id,
       count(a.id) FILTER (WHERE a.status <> 'deleted'),
       coalesce(sum(s.document_count), 0),
       coalesce(sum(s.total_chunks), 0),
       coalesce(sum(s.total_size_bytes), 0)
FROM tenants_organization o
LEFT JOIN knowledge_agent a ON a.organization_id = o.id
LEFT JOIN knowledge_agentstats s ON s.agent_id = a.id
GROUP BY o.id
ON CONFLICT (organization_id) DO NOTHING
"""


class Migration(migrations.Migration):
    dependencies = [
        ("knowledge", "0005_fair_job_claims"),
        ("tenants", "0002_limits_scopes_usage"),
    ]

    operations = [migrations.RunSQL(BACKFILL, migrations.RunSQL.noop)]
