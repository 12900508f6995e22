"""Create the tables in DJANGOTHREADS_DB (run once by the test, before the server starts)."""

import os

import django
from django.core.management import call_command

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangothreads.settings")
django.setup()
call_command("migrate", run_syncdb=True, verbosity=0)
