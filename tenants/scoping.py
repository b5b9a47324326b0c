r"""The one way to reach tenant-owned rows through the ORM.

Every tenant-owned model declares two managers:

    unscoped = UnscopedManager()   # first: Django's default manager (admin, factories)
    objects = TenantManager()      # for_org(org) or nothing

`Model.objects.for_org(org)` is the only scoped entry point; any other use of
`objects` raises, so a forgotten tenant filter fails loudly instead of leaking. Its
statements run in `db.tenant(org)` (core/db.py): the organization is declared to
PostgreSQL, whose row-level security admits that organization's rows only.

`Model.unscoped` is for admin and maintenance; its statements run in `db.unscoped(...)`,
the role that bypasses row-level security. Every bypass of tenant scoping stays
greppable (`grep -rn "\.unscoped"`). Related managers (`agent.documents`) and
`refresh_from_db()` run in whatever scope the transaction declared, like raw Django.

A queryset runs in its scope when it reaches the database: evaluation, iteration,
count/exists/aggregate, update/delete, create. Inside a transaction already declared
for the same organization (an API request) that adds nothing.
"""

from django.db import models

from core import db


class UnscopedQueryError(RuntimeError):
    pass


def _in_scope(method):
    def scoped(self, *args, **kwargs):
        with self._scope():
            return method(self, *args, **kwargs)

    scoped.__name__ = method.__name__
    return scoped


class ScopedQuerySet(models.QuerySet):
    """A queryset whose statements run inside `_scope()`."""

    def _scope(self):
        raise NotImplementedError

    def _fetch_all(self):
        if self._result_cache is None:
            with self._scope():
                super()._fetch_all()

    def iterator(self, chunk_size=None):
        with self._scope():
            yield from super().iterator(chunk_size)

    count = _in_scope(models.QuerySet.count)
    exists = _in_scope(models.QuerySet.exists)
    aggregate = _in_scope(models.QuerySet.aggregate)
    update = _in_scope(models.QuerySet.update)
    delete = _in_scope(models.QuerySet.delete)
    get_or_create = _in_scope(models.QuerySet.get_or_create)
    update_or_create = _in_scope(models.QuerySet.update_or_create)
    in_bulk = _in_scope(models.QuerySet.in_bulk)
    explain = _in_scope(models.QuerySet.explain)
    _raw_delete = _in_scope(models.QuerySet._raw_delete)


class UnscopedQuerySet(ScopedQuerySet):
    def _scope(self):
        return db.unscoped(f"{self.model.__name__}.unscoped")

    create = _in_scope(models.QuerySet.create)
    bulk_create = _in_scope(models.QuerySet.bulk_create)


class UnscopedManager(models.Manager.from_queryset(UnscopedQuerySet)):
    def get_queryset(self):
        # Related managers subclass the default manager's class: they stay in the
        # transaction's own scope instead of bypassing it.
        if hasattr(self, "instance"):  # a related manager: agent.documents
            return models.QuerySet(self.model, using=self._db)
        return super().get_queryset()


class TenantQuerySet(ScopedQuerySet):
    _org_id = None

    def _scope(self):
        return db.tenant(self._org_id)

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
        with self._scope():
            return super().create(**kwargs)

    def bulk_create(self, objs, *args, **kwargs):
        for obj in objs:
            if obj.organization_id is None:
                obj.organization_id = self._org_id
            elif obj.organization_id != self._org_id:
                raise UnscopedQueryError("row belongs to another organization than the queryset's")
        with self._scope():
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
