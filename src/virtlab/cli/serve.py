"""``virtlab serve``: run the API server."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8080,
    data_dir: Annotated[
        Path | None,
        typer.Option(envvar="VIRTLAB_DATA_DIR", help="Data directory [default: XDG data home]."),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            envvar="VIRTLAB_DATABASE_URL",
            help="SQLAlchemy URL [default: sqlite in the data directory].",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
    stop_nodes_on_exit: Annotated[
        bool | None,
        typer.Option(
            "--stop-nodes-on-exit/--keep-nodes-on-exit",
            help="Stop running nodes when the server stops [default: keep them running].",
        ),
    ] = None,
) -> None:
    """Run the virtlab server (REST API at /api, its documentation at /docs)."""
    import uvicorn

    from virtlab.api import create_app
    from virtlab.settings import Settings

    overrides: dict = {"host": host, "port": port}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if database_url is not None:
        overrides["database_url"] = database_url
    if stop_nodes_on_exit is not None:
        overrides["stop_nodes_on_exit"] = stop_nodes_on_exit
    settings = Settings(**overrides)
    try:
        settings.check_socket_paths()
        settings.check_console_exposure()
        settings.check_udp_ports()
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    typer.echo(f"virtlab: data in {settings.data_dir}, serving http://{host}:{port}", err=True)
    # Idle keep-alive connections are kept for 30 s, longer than clients keep theirs (httpx
    # 5 s): with uvicorn's default of 5 s, a client could reuse a connection at the moment the
    # server closed it, and lose that request ("Server disconnected without sending a response").
    uvicorn.run(
        app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5,
        timeout_keep_alive=30,
    )  # fmt: skip
