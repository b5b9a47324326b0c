from django.db.models import CharField, Lookup


class Any(Lookup):
    """`field__any=[...]`: `field = ANY(%s)` with the list as one array parameter. Unlike
    `__in`, which sends one parameter per value, the statement's text does not grow with
    the list, so the driver and the planner do the same small work for 200 keys as for 2."""

    lookup_name = "any"
    prepare_rhs = False

    def as_sql(self, compiler, connection):
        lhs, lhs_params = self.process_lhs(compiler, connection)
        return f"{lhs} = ANY(%s)", [*lhs_params, list(self.rhs)]


CharField.register_lookup(Any)
