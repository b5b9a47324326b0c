from django.apps import AppConfig


class KnowledgeConfig(AppConfig):
    name = "knowledge"

    def ready(self):
        from knowledge import lookups  # noqa: F401 - registers field__any
        from tenants.retention import Rule, register

        # Finished jobs (their payloads are dropped when they end), by their (organization,
        # status, created_at) indexes.
        for name, table, ended in (
            ("ingestion_jobs", "knowledge_ingestionjob", "'completed', 'failed'"),
            ("deletion_jobs", "knowledge_deletionjob", "'completed', 'failed', 'cancelled'"),
        ):
            register(Rule(name, table, "created_at", "LORE_JOB_RETENTION_DAYS", "job_retention_days", where=f"t.status IN ({ended})"))
