from django.db import migrations

from core.rls import TenantRowSecurity


class Migration(migrations.Migration):
    dependencies = [("search", "0001_initial")]

    operations = [TenantRowSecurity("search_chunkaccess")]
