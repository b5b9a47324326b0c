from importlib import import_module

from django.core.management.base import BaseCommand
from django_q.models import Schedule

# Apps whose tasks module declares SCHEDULES = [(dotted function, minutes), ...].
TASK_MODULES = ["tenants.tasks", "knowledge.tasks", "search.tasks"]


def declared_schedules() -> dict[str, int]:
    return {func: minutes for module in TASK_MODULES for func, minutes in import_module(module).SCHEDULES}


class Command(BaseCommand):
    help = "Create or update the Django-Q2 schedules the apps declare; remove ones no longer declared."

    def handle(self, *args, **options):
        declared = declared_schedules()
        for func, minutes in declared.items():
            Schedule.objects.update_or_create(
                name=func, defaults={"func": func, "schedule_type": Schedule.MINUTES, "minutes": minutes, "repeats": -1}
            )
        stale = Schedule.objects.filter(name__startswith=tuple(m.split(".")[0] + "." for m in TASK_MODULES)).exclude(
            name__in=declared
        )
        removed = stale.delete()[0]
        self.stdout.write(f"{len(declared)} schedules in place, {removed} removed")
