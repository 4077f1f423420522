from fastapi import APIRouter

from virtlab import __version__
from virtlab.api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/api/health", response_model=Health, summary="Is the server up")
async def health() -> Health:
    return Health(version=__version__)
