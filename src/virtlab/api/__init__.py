"""The REST API (FastAPI). ``create_app(settings)`` is the entry point."""

from virtlab.api.app import create_app

__all__ = ["create_app"]
