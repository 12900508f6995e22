"""A Django project with the ORM on SQLite and database-backed sessions (threads smoke test).

The database file is DJANGOTHREADS_DB; the test creates its tables before
starting the server (`python -m djangothreads.setup_db`).
"""

import os

SECRET_KEY = "forkserve-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "djangothreads.urls"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.sessions", "djangothreads"]
MIDDLEWARE = ["django.contrib.sessions.middleware.SessionMiddleware"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGOTHREADS_DB", ":memory:"),
        # Writers from several threads and processes wait for each other's lock.
        "OPTIONS": {"timeout": 30},
    }
}
SESSION_ENGINE = "django.contrib.sessions.backends.db"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True
