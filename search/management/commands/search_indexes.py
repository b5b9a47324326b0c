from django.core.management.base import BaseCommand

from search import indexes


class Command(BaseCommand):
    help = "List the HNSW graphs on knowledge_chunk (per large agent and organization); --sync builds and drops them now."

    def add_arguments(self, parser):
        parser.add_argument("--sync", action="store_true", help="create missing graphs and drop unneeded ones first")

    def handle(self, *args, sync, **options):
        if sync:
            result = indexes.sync_indexes()
            if result.skipped:
                self.stdout.write("another sync is running; listing what is there")
            else:
                self.stdout.write(
                    f"agents: {len(result.created_agents)} built, {len(result.dropped_agents)} dropped; "
                    f"organizations: {len(result.created_orgs)} built, {len(result.dropped_orgs)} dropped; "
                    f"{len(result.rebuilt)} rebuilt"
                )
        graphs = indexes.graphs()
        for graph in graphs:
            state = "" if graph.valid else " (building or failed)"
            options = ", ".join(f"{k} {v}" for k, v in graph.options.items())
            self.stdout.write(
                f"{graph.name}  {graph.scope} {graph.owner_id}  {options}  {graph.size_bytes / 2**20:.1f} MB{state}"
            )
        self.stdout.write(f"{len(graphs)} graphs")
