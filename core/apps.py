from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = "Lore core"

    def ready(self):
        from django_q.signals import post_spawn

        from core import job_poller

        # Every Django-Q2 worker process polls the job tables for lost wake-ups.
        post_spawn.connect(job_poller.start_poller, dispatch_uid="lore-job-poller")
