"""Consoles: one hub per node's serial socket, and the bridges clients reach it through.

* :class:`SerialHub` reads QEMU's serial unix socket (the only client QEMU allows) and shares
  it: scrollback, live output to any number of :class:`Subscription` s, keystrokes from all.
* :class:`TelnetServer` serves a hub on a TCP port for PuTTY, SecureCRT and ``telnet``.
* :func:`serve_serial` and :func:`serve_vnc` bridge a Starlette/FastAPI WebSocket to a hub
  (xterm.js) or to QEMU's VNC unix socket (noVNC, websockify-compatible).
* :class:`VncTcpProxy` gives desktop VNC clients a TCP port onto QEMU's VNC unix socket.
"""

from virtlab.consoles.hub import ConsoleUnavailable, HubState, SerialHub, Subscription
from virtlab.consoles.telnet import TelnetServer
from virtlab.consoles.vnc import VncTcpProxy
from virtlab.consoles.websocket import serve_serial, serve_vnc

__all__ = [
    "ConsoleUnavailable",
    "HubState",
    "SerialHub",
    "Subscription",
    "TelnetServer",
    "VncTcpProxy",
    "serve_serial",
    "serve_vnc",
]
