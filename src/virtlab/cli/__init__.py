"""The ``virtlab`` command line (typer + rich): one module per noun, talking HTTP to the server."""
