from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    """The operators' console in the admin: reads every app, writes through their services."""

    name = "console"
