"""virtlab: a self-hosted virtual network lab server."""

__version__ = "0.1.0"
