from django.core.management.base import BaseCommand

from knowledge.selectors import chunk_vectors_out_of_line
from search import indexes


class Command(BaseCommand):
    help = "List search's partial indexes on knowledge_chunk (HNSW graphs per large agent and organization, keyword indexes per large agent); --sync builds and drops them now."

    def add_arguments(self, parser):
        parser.add_argument("--sync", action="store_true", help="create missing indexes and drop unneeded ones first")

    def handle(self, *args, sync, **options):
        if sync:
            result = indexes.sync_indexes()
            if result.skipped:
                self.stdout.write("another sync is running; listing what is there")
            else:
                self.stdout.write(
                    f"agents: {len(result.created_agents)} built, {len(result.dropped_agents)} dropped; "
                    f"agents' keyword indexes: {len(result.created_keyword)} built, {len(result.dropped_keyword)} dropped; "
                    f"organizations: {len(result.created_orgs)} built, {len(result.dropped_orgs)} dropped; "
                    f"{len(result.rebuilt)} rebuilt"
                    + (f"; statistics refreshed: {', '.join(result.analyzed)}" if result.analyzed else "")
                )
        graphs = indexes.graphs()
        for graph in graphs:
            state = "" if graph.valid else " (building or failed)"
            options = ", ".join(f"{k} {v}" for k, v in graph.options.items())
            self.stdout.write(
                f"{graph.name}  {graph.scope} {graph.owner_id}  {options}  {graph.size_bytes / 2**20:.1f} MB{state}"
            )
        self.stdout.write(f"{len(graphs)} indexes")
        outside = chunk_vectors_out_of_line()
        if outside and outside[0]:
            self.stdout.write(
                f"{outside[0]} of the oldest {outside[1]} chunks keep their vector out of line (written before migration"
                " knowledge.0014): searches scan them slower until they are rewritten, by VACUUM FULL knowledge_chunk"
                " (locks the table) or pg_repack (README, \"Chunk storage\")"
            )
