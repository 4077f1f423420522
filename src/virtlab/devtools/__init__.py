"""Tools for developers, tests and demos; nothing here runs in the server itself."""
