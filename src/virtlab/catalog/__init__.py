"""The catalog: SQLAlchemy over SQLite by default (PostgreSQL by URL), migrated by Alembic.

Repositories return plain records (``ImageRecord``), never ORM objects or HTTP types.
"""

from virtlab.catalog.db import Catalog
from virtlab.catalog.images import ImageRecord, ImageRepository

__all__ = ["Catalog", "ImageRecord", "ImageRepository"]
