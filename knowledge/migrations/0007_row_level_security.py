from django.db import migrations

from core.rls import TenantRowSecurity

TABLES = [
    "knowledge_agent", "knowledge_agentstats", "knowledge_document", "knowledge_section", "knowledge_chunk",
    "knowledge_embeddingcache", "knowledge_ingestionjob", "knowledge_deletionjob", "knowledge_jobturn",
]  # fmt: skip


class Migration(migrations.Migration):
    dependencies = [("knowledge", "0006_organization_usage_backfill")]

    operations = [TenantRowSecurity(table) for table in TABLES]
