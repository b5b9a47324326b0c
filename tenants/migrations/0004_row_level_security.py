from django.db import migrations

from core.rls import TenantRowSecurity


class Migration(migrations.Migration):
    dependencies = [("tenants", "0003_organization_max_in_flight")]

    operations = [TenantRowSecurity("tenants_apikey"), TenantRowSecurity("tenants_organizationusage")]
