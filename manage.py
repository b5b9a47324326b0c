#!/usr/bin/env python
import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
    if sys.argv[1:2] == ["qcluster"]:
        # The cluster's processes write their metrics to a folder of their own, emptied now:
        # before Django starts, as prometheus_client is imported with it.
        from config import multiproc

        multiproc.prepare("worker")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
