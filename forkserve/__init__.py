"""forkserve: a production prefork WSGI server."""

__version__ = "0.1.0"
SERVER_SOFTWARE = f"forkserve/{__version__}"
