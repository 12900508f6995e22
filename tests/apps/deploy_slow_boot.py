"""An app whose import takes a while (a big framework, a warm-up), for sd_notify READY timing."""

from __future__ import annotations

import os
import time

from deploy_apps import app

BOOT_SECONDS = float(os.environ.get("DEPLOY_BOOT_SECONDS", "1.0"))
time.sleep(BOOT_SECONDS)

__all__ = ["app"]
