from django.db import models
from django.utils import timezone

from knowledge.models import Agent
from tenants.models import Organization
from tenants.scoping import TenantManager, UnscopedManager


class ChunkAccess(models.Model):
    """Per chunk and day: how often search returned it and with what score.

    Written in bulk from a buffer (INSERT … ON CONFLICT DO UPDATE), never per search.
    chunk_id has no foreign key: access rows must not slow chunk deletion, and they
    are removed with the agent's other data.
    """

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    agent = models.ForeignKey(Agent, on_delete=models.DO_NOTHING, related_name="+")
    chunk_id = models.BigIntegerField()
    day = models.DateField()
    access_count = models.BigIntegerField(default=0)
    score_sum = models.FloatField(default=0.0)
    last_accessed_at = models.DateTimeField(default=timezone.now)

    unscoped = UnscopedManager()
    objects = TenantManager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "agent", "day", "chunk_id"], name="chunkaccess_org_agent_day_chunk_uniq"
            ),
        ]
