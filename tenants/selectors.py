from tenants.models import AuditEvent, Organization


def organization_get_by_slug(*, slug: str) -> Organization | None:
    return Organization.objects.filter(slug=slug).first()


def audit_event_list(
    *, org: Organization, action: str | None = None, actor: str | None = None, target_type: str | None = None,
    target_key: str | None = None, since=None, until=None, before: tuple | None = None, limit: int = 50,
) -> list[AuditEvent]:
    """The organization's events, newest first (time, then id), from just before `before`
    (a (time, id) pair: the last event of the previous page). `actor` is an actor kind or
    an API key's prefix."""
    wanted = {
        "action": action, "target_type": target_type, "target_key": target_key, "time__gte": since, "time__lt": until,
        "actor_kind" if actor in AuditEvent.ActorKind.values else "actor_key_prefix": actor,
    }  # fmt: skip
    events = AuditEvent.objects.for_org(org).filter(**{name: value for name, value in wanted.items() if value})
    if before:
        # time <= t is the index's range; the pair excludes what the previous page showed.
        time, pk = before
        events = events.filter(time__lte=time).exclude(time=time, id__gte=pk)
    return list(events.order_by("-time", "-id")[:limit])
