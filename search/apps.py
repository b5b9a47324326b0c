from django.apps import AppConfig


class SearchConfig(AppConfig):
    name = "search"

    def ready(self):
        from core import cleanup, metrics
        from knowledge import activity
        from search import indexes, tracking
        from search.cleanup import delete_agent_access, drop_agent_indexes, drop_organization_index

        # Whatever a process counts in the activity history, its tracking flusher pushes.
        activity.register_pusher(tracking.ensure_flusher)

        cleanup.register(
            before_agent=drop_agent_indexes, before_organization=drop_organization_index, agent_rows=delete_agent_access
        )
        from tenants.retention import Rule, register

        # By day; the longest hot-chunks window is the default. Search history rollups, once
        # they are a table, register here the same way.
        register(Rule("access_rows", "search_chunkaccess", "day", "SEARCH_ACCESS_RETENTION_DAYS", "access_retention_days"))

        metrics.on_scrape("lore_index_sync_backlog", indexes.sync_backlog)
