from django.apps import AppConfig


class KnowledgeConfig(AppConfig):
    name = "knowledge"

    def ready(self):
        from knowledge import lookups  # noqa: F401 - registers field__any
        from core import jobs
        from knowledge.activity_models import Period
        from knowledge.services import exports_expire, jobs_audit_outcome
        from tenants.retention import Rule, register, register_hook

        # Finished jobs (their payloads are dropped when they end), by their (organization,
        # status, created_at) indexes.
        for name, table, ended in (
            ("ingestion_jobs", "knowledge_ingestionjob", "'completed', 'failed'"),
            ("deletion_jobs", "knowledge_deletionjob", "'completed', 'failed', 'cancelled'"),
            # Exports once their file is gone (expired) or never written (failed).
            ("export_jobs", "knowledge_exportjob", "'expired', 'failed'"),
        ):
            register(Rule(name, table, "created_at", "LORE_JOB_RETENTION_DAYS", "job_retention_days", where=f"t.status IN ({ended})"))
        # The activity history's hours (minutes are folded into hours by activity_rollup, not
        # removed): LORE_ACTIVITY_RETENTION_DAYS or the organization's own; the site's rows
        # (no organization) by the setting.
        for name, table, override in (
            ("agent_activity_hours", "knowledge_agentactivity", "activity_retention_days"),
            ("organization_activity_hours", "knowledge_organizationactivity", "activity_retention_days"),
            ("site_activity_hours", "knowledge_siteactivity", ""),
        ):
            register(Rule(name, table, "start", "LORE_ACTIVITY_RETENTION_DAYS", override, where=f"t.period = {int(Period.HOUR)}"))
        # Export files past EXPORT_TTL (the job row stays, `expired`, until the jobs' retention).
        register_hook("export_files", lambda *, now: len(exports_expire(now=now)))
        # Jobs core failed or requeued: their audit events.
        jobs.on_outcome(jobs_audit_outcome)
