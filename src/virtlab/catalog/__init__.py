"""The catalog: SQLAlchemy over SQLite by default (PostgreSQL by URL), migrated by Alembic.

Repositories return plain records (``ImageRecord``), never ORM objects or HTTP types.
"""

from virtlab.catalog.db import Catalog
from virtlab.catalog.images import ImageRecord, ImageRepository
from virtlab.catalog.nodes import NodeRecord, NodeRepository

__all__ = ["Catalog", "ImageRecord", "ImageRepository", "NodeRecord", "NodeRepository"]
