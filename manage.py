#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from django.core.management import execute_from_command_line

    from core.audit import command_audit

    # Model changes a command makes are audited with who ran it (core/audit.py).
    with command_audit(sys.argv):
        execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
