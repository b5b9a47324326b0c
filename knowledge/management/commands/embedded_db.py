from django.conf import settings
from django.core.management.base import BaseCommand

from config import embedded_db


class Command(BaseCommand):
    help = "Stop or show the embedded PostgreSQL server (used when DATABASE_URL is unset)."

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["status", "stop"])

    def handle(self, *args, action, **options):
        if action == "stop":
            embedded_db.stop(settings.LORE_DATA_DIR)
            self.stdout.write("Embedded PostgreSQL stopped.")
        else:
            self.stdout.write(f"Embedded PostgreSQL data: {settings.LORE_DATA_DIR / 'pg'}")
