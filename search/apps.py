from django.apps import AppConfig


class SearchConfig(AppConfig):
    name = "search"

    def ready(self):
        from core import cleanup, metrics
        from search import indexes
        from search.cleanup import delete_agent_access, drop_agent_indexes, drop_organization_index

        cleanup.register(
            before_agent=drop_agent_indexes, before_organization=drop_organization_index, agent_rows=delete_agent_access
        )
        metrics.on_scrape("lore_index_sync_backlog", indexes.sync_backlog)
