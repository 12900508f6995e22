"""Shared test configuration: the repo root on sys.path so `tests.support` imports."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
APPS = ROOT / "tests" / "apps"
if str(APPS) not in sys.path:
    sys.path.insert(0, str(APPS))
