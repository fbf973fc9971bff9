"""matrix-stack: a complete Matrix service on one Debian server."""

__version__ = "0.1.0"
