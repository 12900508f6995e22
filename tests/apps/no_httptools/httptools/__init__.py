# On PYTHONPATH ahead of site-packages, this stands in for a machine without
# the fast extra: `import httptools` fails as it would there.
raise ImportError("No module named 'httptools' (hidden by tests/apps/no_httptools)")
