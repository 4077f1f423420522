"""Configuration: embedded defaults, overridden by ``VIRTLAB_*`` environment variables or flags.

Nothing reads settings at import time; ``virtlab.runtime.Runtime`` is built from one ``Settings``.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["GiB", "MiB", "Settings", "TiB", "default_data_dir", "is_loopback"]

_SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes, the last a NUL
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/virtlab``, or ``~/.local/share/virtlab``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "virtlab"


class Settings(BaseSettings):
    """Everything the server needs to run; every field has a working default."""

    model_config = SettingsConfigDict(env_prefix="VIRTLAB_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default: sqlite:///DATA/catalog.sqlite3. "
        "postgresql://user:pass@host/db also works.",
    )
    host: str = "127.0.0.1"
    port: int = 8080
    # How long a catalog write waits for another writer's lock (SQLite) before it is refused
    # with 503 and Retry-After; the wait happens in a worker thread, never on the event loop.
    catalog_busy_timeout: float = Field(default=30.0, gt=0, le=600)

    # Import limits.
    max_upload_bytes: int = 256 * GiB
    max_expanded_bytes: int = 256 * GiB
    max_virtual_size: int = 2 * TiB
    qemu_img_cpu_seconds: int = 30  # for `qemu-img info`, as OpenStack runs it
    qemu_img_address_space: int = 1 * GiB  # for `qemu-img info`
    convert_address_space: int = 4 * GiB  # for convert/check/compare: they buffer more
    # Imports in flight at once (uploads being received, lab archives, conversions, rescans):
    # for the whole server, and for one user (admins: the server's limit only). Past either,
    # a new import is refused at once with 429 and Retry-After.
    max_concurrent_imports: int = Field(default=4, ge=1)
    max_concurrent_imports_per_user: int = Field(default=2, ge=1)

    # Limits of nodes. Nodes in labs of users with the role `user` count against that user
    # (0: no limit); admins' labs are exempt.
    max_nodes_per_user: int = Field(default=50, ge=0)
    # RAM promised to nodes (running, starting, suspended, stopping; and boot tests) must stay
    # within (host memory - reserve) x overcommit. host_memory_mb: None reads MemTotal.
    host_memory_mb: int | None = Field(default=None, ge=1)
    memory_reserve_mb: int = Field(default=1024, ge=0)  # kept for the host and the server
    memory_overcommit: float = Field(default=1.0, gt=0, le=100)

    # Nodes.
    accel: str = Field(default="auto", pattern="^(auto|kvm|tcg)$")
    console_host: str = "127.0.0.1"  # where telnet and VNC console ports listen
    telnet_ports: str = "5000-5899"
    vnc_ports: str = "5900-6899"
    vnc_tcp: bool = True  # a TCP VNC port per node, for desktop VNC clients
    # Whether the telnet and VNC ports ask for a ticket (POST /api/nodes/{ref}/console/ticket):
    # auto: when console_host is not a loopback address; never is refused on such an address.
    console_tickets: Literal["auto", "always", "never"] = "auto"
    console_ticket_seconds: float = Field(default=60.0, gt=0, le=3600)  # a ticket's lifetime
    # Wrong tickets typed at one console port from one address (within 10 minutes) before that
    # address is refused there for console_ticket_lockout_seconds (doubling if it goes on).
    console_ticket_attempts: int = Field(default=5, ge=1, le=1000)
    console_ticket_lockout_seconds: float = Field(default=60.0, gt=0, le=86400)
    stop_timeout: float = 30.0  # seconds a guest gets to power off before a hard stop
    stop_nodes_on_exit: bool = False  # by default nodes outlive the server

    # Hosts (libvirt): where a node goes when it names none, and how long a host gets to answer.
    placement: Literal["spread", "pack"] = "spread"  # most room left first | fill one first
    host_open_timeout: float = Field(default=30.0, gt=0)  # seconds, at `host add` and start-up
    tunnel_ports: str = "40000-40999"  # UDP ports of links on libvirt hosts, on each host
    # The server's address as libvirt hosts reach it: a link with an end on a libvirt host that
    # goes through the server (every link to a local node; relayed links) has its relay listen
    # on UDP there, and the host's node sends there. Unset: 127.0.0.1 (::1) for a host whose own
    # address is a loopback one (it is this machine); such links to other hosts are refused.
    relay_address: str | None = None
    relay_ports: str = "41000-41999"  # the server's UDP ports for those links
    tunnels_via_server: bool = False  # new links between libvirt hosts go through the server

    # Access.
    admin_password: SecretStr | None = Field(
        default=None,
        description="the first admin's password, used only when the catalog has no user yet; "
        "without it one is generated and printed once",
    )
    session_hours: float = Field(default=12.0, gt=0)  # a browser session's lifetime
    upload_role: Literal["user", "admin"] = "user"  # who may upload, import and add images
    image_delete_role: Literal["user", "admin"] = "admin"  # who may delete images

    # Threads that run the blocking parts of requests (catalog queries in plain-def routes and
    # dependencies): past a few per core they only queue for Python's interpreter lock.
    worker_threads: int = Field(default=8, ge=1, le=256)

    # The event loop's watchdog (virtlab._util.loopwatch): a loop that answers later than this
    # is logged as a stall, with the code that held it; 0 turns the watchdog off.
    loop_stall_ms: float = Field(default=100.0, ge=0)

    # Testing aid: kill the server (SIGKILL, as a power cut would) at a named point of the
    # import pipeline or of a lab's deploy and start. Used only by the crash-safety tests; the
    # points are listed in virtlab._util.faults.
    fault_point: str | None = None

    @field_validator("relay_address")
    @classmethod
    def _an_ip_address(cls, value: str | None) -> str | None:
        if not value:
            return None
        try:
            return str(ipaddress.ip_address(value.strip().strip("[]")))
        except ValueError:
            raise ValueError(
                f"VIRTLAB_RELAY_ADDRESS is an IP address of this server (as libvirt hosts reach "
                f"it), not {value!r}"
            ) from None

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def custom_images_dir(self) -> Path:
        return self.images_dir / "custom"

    def check_socket_paths(self) -> None:
        """Refuse a data directory so deep that node sockets would pass the 108-byte limit."""
        longest = len(str(self.nodes_dir.absolute())) + len("/0123456789ab/serial.scrollback")
        if longest > _SUN_PATH_MAX:
            raise ValueError(
                f"the data directory {self.data_dir} is too deep for the unix sockets of nodes "
                f"({longest} bytes; at most {_SUN_PATH_MAX}); choose a shorter --data-dir"
            )

    @property
    def console_tickets_required(self) -> bool:
        """Whether a console port lets a connection in only with a ticket."""
        if self.console_tickets == "auto":
            return not is_loopback(self.console_host)
        return self.console_tickets == "always"

    def check_console_exposure(self) -> None:
        """Refuse console ports open to a network without tickets: they are root shells."""
        if self.console_tickets == "never" and not is_loopback(self.console_host):
            raise ValueError(
                f"console ports on {self.console_host or 'every address'} would let anyone on "
                "that network reach root shells; use tickets (VIRTLAB_CONSOLE_TICKETS=auto) or "
                "keep VIRTLAB_CONSOLE_HOST=127.0.0.1"
            )

    def check_udp_ports(self) -> None:
        """Refuse relay ports that overlap tunnel ports: a host on the server's own address (a
        loopback host) would bind the ones the relay listens on."""
        tunnel, relay = _span(self.tunnel_ports), _span(self.relay_ports)
        if tunnel and relay and tunnel[0] <= relay[1] and relay[0] <= tunnel[1]:
            raise ValueError(
                f"VIRTLAB_RELAY_PORTS ({self.relay_ports}) overlaps VIRTLAB_TUNNEL_PORTS "
                f"({self.tunnel_ports}); give the server's relay ports a range of their own"
            )

    @property
    def nodes_dir(self) -> Path:
        return self.data_dir / "nodes"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def staging_dir(self) -> Path:
        return self.data_dir / "staging"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'catalog.sqlite3'}"


def _span(text: str) -> tuple[int, int] | None:
    """``"40000-40999"`` → ``(40000, 40999)``; ``None`` if it is no range (refused elsewhere)."""
    first, _, last = text.partition("-")
    try:
        return int(first), int(last or first)
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1; a name or the empty host (every address) is not."""
    if host.strip().lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False
