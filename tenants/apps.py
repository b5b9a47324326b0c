from django.apps import AppConfig


class TenantsConfig(AppConfig):
    name = "tenants"

    def ready(self):
        from tenants import schema  # noqa: F401 - registers the API key's security scheme
        from tenants.retention import Rule, register

        register(Rule("audit_events", "tenants_auditevent", "time", "LORE_AUDIT_RETENTION_DAYS", "audit_retention_days", append_only=True))
