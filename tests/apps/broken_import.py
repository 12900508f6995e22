"""An app module whose import fails, for the bad-APP tests."""

raise RuntimeError("this module refuses to import")
