from django.db import migrations

from core.rls import BypassRolePrivileges


class Migration(migrations.Migration):
    # After every table that exists when row-level security arrives; later ones get the
    # privileges by default.
    dependencies = [
        ("knowledge", "0006_organization_usage_backfill"),
        ("search", "0001_initial"),
        ("tenants", "0003_organization_max_in_flight"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("admin", "0003_logentry_add_action_flag_choices"),
        ("sessions", "0001_initial"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [BypassRolePrivileges()]
