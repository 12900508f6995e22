"""An app whose import takes LIFECYCLE_BOOT_SECONDS (for --boot-timeout)."""

from __future__ import annotations

import os
import time


def import_takes_long(seconds: float) -> None:
    time.sleep(seconds)


import_takes_long(float(os.environ.get("LIFECYCLE_BOOT_SECONDS", "60")))

from lifecycle_apps import app  # noqa: E402,F401
