"""Benchmark suite: forkserve against gunicorn, uWSGI, waitress and granian.

Run `python -m benchmarks.run` from the repository root (see README.md here).
"""
