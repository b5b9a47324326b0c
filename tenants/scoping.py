r"""The one way to reach tenant-owned rows.

Every tenant-owned model declares two managers:

    unscoped = models.Manager()   # first: Django's default manager (admin, related objects)
    objects = TenantManager()     # for_org(org) or nothing

`Model.objects.for_org(org)` is the only scoped entry point; any other use of
`objects` raises, so a forgotten tenant filter fails loudly instead of leaking.
Admin and management commands use `Model.unscoped`, which makes every bypass of
tenant scoping greppable (`grep -rn "\.unscoped"`).
"""

from django.db import models


class UnscopedQueryError(RuntimeError):
    pass


class TenantQuerySet(models.QuerySet):
    _org_id = None

    def _clone(self):
        clone = super()._clone()
        clone._org_id = self._org_id
        return clone

    def _check_org(self, values):
        org_id = values.get("organization_id", getattr(values.get("organization"), "pk", None))
        if org_id is not None and org_id != self._org_id:
            raise UnscopedQueryError("row belongs to another organization than the queryset's")

    def create(self, **kwargs):
        self._check_org(kwargs)
        if "organization" not in kwargs:
            kwargs["organization_id"] = self._org_id
        return super().create(**kwargs)

    def bulk_create(self, objs, *args, **kwargs):
        for obj in objs:
            if obj.organization_id is None:
                obj.organization_id = self._org_id
            elif obj.organization_id != self._org_id:
                raise UnscopedQueryError("row belongs to another organization than the queryset's")
        return super().bulk_create(objs, *args, **kwargs)


class TenantManager(models.Manager):
    def get_queryset(self):
        raise UnscopedQueryError(
            f"{self.model.__name__}.objects must be scoped: use .for_org(org), "
            f"or {self.model.__name__}.unscoped in admin and commands"
        )

    def for_org(self, org) -> TenantQuerySet:
        org_id = getattr(org, "pk", None)
        if not org_id:
            raise UnscopedQueryError("for_org() needs a saved organization")
        qs = TenantQuerySet(self.model, using=self._db).filter(organization_id=org_id)
        qs._org_id = org_id
        return qs
