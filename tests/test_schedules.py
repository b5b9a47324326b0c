from io import StringIO

from django.core.management import call_command
from django_q.models import Schedule

from tenants.management.commands.sync_schedules import declared_schedules


def test_sync_schedules_registers_every_declared_task_once(db):
    call_command("sync_schedules", stdout=StringIO())
    call_command("sync_schedules", stdout=StringIO())
    names = sorted(Schedule.objects.values_list("name", flat=True))
    assert names == sorted(declared_schedules())
    for func in names:
        module, name = func.rsplit(".", 1)
        assert callable(getattr(__import__(module, fromlist=[name]), name))
