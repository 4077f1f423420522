"""Two libvirt "hosts" on this one machine: isolated ``libvirtd`` daemons on 127.0.0.1.

::

    with LibvirtHost.start(root / "h1", tls=False) as h1, LibvirtHost.start(root / "h2") as h2:
        conn = libvirt.open(h1.uri)

A privileged libvirtd hard-codes ``/etc/libvirt``, ``/run/libvirt``, ``/var/lib/libvirt``,
``/var/cache/libvirt`` and ``/var/log/libvirt``. Each host runs in its own mount namespace
(``unshare -m --propagation private``) with those five folders bind-mounted from its own folder
(``ROOT/{etc,run,lib,cache,log}``), so from here a host's files are plain files under ROOT.
Each listens on its own port on 127.0.0.1 only: plain TCP (``qemu+tcp://``, no auth), or TLS
with a CA, a server certificate and an allow-list of client certificates, all made here with
``cryptography`` (``qemu+tls://…?pkipath=…``).

qemu.conf is Debian's default where it matters to virtlab (QEMU runs as ``libvirt-qemu``,
``dynamic_ownership = 1``: a base image is kept from being re-owned by virtlab's own domain XML,
not by the host's settings) plus ``cgroup_controllers = [ ]`` (libvirt would move QEMU out of
our cgroup) and a VNC port range of the host's own (two daemons on one address).

``libvirtd`` runs in the foreground as the child we started (its pid is ours); ``virtlogd``
daemonizes with its pid file under ROOT/run. :meth:`LibvirtHost.stop` ends both, and every
QEMU the host started (found by the pid files libvirt keeps in ROOT/run/qemu), by pid.
:meth:`stop_daemon` / :meth:`start_daemon` stop and start only libvirtd (its QEMUs run on).

A fresh libvirtd probes QEMU's capabilities on its first connection (~8 s under TCG) and caches
them in ``/var/cache/libvirt/qemu/capabilities``. The first host this process starts is probed
once (``virsh capabilities``) and its cache kept; every later host starts with a copy of it in
its own ``ROOT/cache``. Each daemon is still a fresh one of its own; libvirtd checks each cached
file (QEMU's and libvirtd's binaries, the kernel, the CPU…) and probes again if it is stale.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import grp
import ipaddress
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = [
    "CLIENT_DN",
    "LibvirtHost",
    "ensure_qemu_user",
    "free_port",
    "have_libvirtd",
    "make_client_pki",
]

ADDRESS = "127.0.0.1"
FOLDERS = {
    "etc": "/etc/libvirt",
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "cache": "/var/cache/libvirt",
    "log": "/var/log/libvirt",
}
CLIENT_DN = "O=virtlab tests,CN=virtlab-server"  # the allow-listed client
_START_TIMEOUT = 30.0
_CAPS = Path("cache") / "qemu" / "capabilities"  # under a host's ROOT
_seed: Path | None = None
_seed_lock = threading.Lock()


def _seed_dir() -> Path:
    """This process's copy of a probed QEMU capability cache (empty until the first probe)."""
    global _seed
    if _seed is None:
        _seed = Path(tempfile.mkdtemp(prefix="virtlab-qemucaps-"))
        atexit.register(shutil.rmtree, _seed, True)
    return _seed


def have_libvirtd() -> bool:
    return all(shutil.which(tool) for tool in ("libvirtd", "virtlogd", "unshare"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind((ADDRESS, 0))
        return int(s.getsockname()[1])


def _free_range(count: int) -> int:
    """A first port of ``count`` consecutive ports bindable on 127.0.0.1 now."""
    for _ in range(200):
        base = free_port()
        if base + count > 65000:
            continue
        ok = True
        for port in range(base, base + count):
            with socket.socket() as s:
                try:
                    s.bind((ADDRESS, port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError(f"no {count} consecutive free ports on {ADDRESS}")


def ensure_qemu_user() -> None:
    """The ``libvirt-qemu`` system user (primary group ``kvm``) and the ``libvirt-qemu`` group it
    is also in, as Debian's libvirt-daemon-system makes them: libvirtd resolves both built-in
    names before it reads qemu.conf, and refuses to start without them."""
    for group in ("kvm", "libvirt-qemu"):
        try:
            grp.getgrnam(group)
        except KeyError:
            subprocess.run(["groupadd", "--system", group], check=True)
    try:
        pwd.getpwnam("libvirt-qemu")
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--gid", "kvm", "--groups", "libvirt-qemu",
             "--home-dir", "/var/lib/libvirt", "--no-create-home",
             "--shell", "/usr/sbin/nologin", "--comment", "Libvirt Qemu", "libvirt-qemu"],
            check=True,
        )  # fmt: skip
    if "libvirt-qemu" not in grp.getgrnam("libvirt-qemu").gr_mem:
        subprocess.run(["usermod", "--append", "--groups", "libvirt-qemu", "libvirt-qemu"],
                       check=True)  # fmt: skip


# --- certificates -------------------------------------------------------------------------------


def _name(dn: dict[NameOID, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in dn.items()])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _cert(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server_ip: str | None = None,
    client: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    else:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), True
        )
        usage = (
            x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
            if client
            else (x509.oid.ExtendedKeyUsageOID.SERVER_AUTH)
        )
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), False)
    if server_ip is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(server_ip))]), False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Pki:
    """A CA (its key kept, to sign client certificates) and where its certificate is."""

    ca_cert: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey

    @property
    def ca_pem(self) -> bytes:
        return _pem(self.ca_cert)


def _make_server_pki(pki_dir: Path) -> Pki:
    """CA + server certificate for 127.0.0.1, in libvirt's file names under ``pki_dir``."""
    pki_dir.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_name = _name({NameOID.ORGANIZATION_NAME: "virtlab tests", NameOID.COMMON_NAME: "test CA"})
    ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
    server_key = _key()
    server = _cert(
        _name({NameOID.ORGANIZATION_NAME: "virtlab tests", NameOID.COMMON_NAME: ADDRESS}),
        server_key, ca_name, ca_key, server_ip=ADDRESS,
    )  # fmt: skip
    (pki_dir / "cacert.pem").write_bytes(_pem(ca))
    (pki_dir / "servercert.pem").write_bytes(_pem(server))
    _write_key(pki_dir / "serverkey.pem", server_key)
    return Pki(ca, ca_key)


def make_client_pki(pki: Pki, out: Path, *, common_name: str = "virtlab-server") -> Path:
    """A ``pkipath`` folder for a client: cacert.pem, clientcert.pem, clientkey.pem."""
    out.mkdir(parents=True, exist_ok=True)
    key = _key()
    subject = _name({NameOID.ORGANIZATION_NAME: "virtlab tests", NameOID.COMMON_NAME: common_name})
    cert = _cert(subject, key, pki.ca_cert.subject, pki.ca_key, client=True)
    (out / "cacert.pem").write_bytes(pki.ca_pem)
    (out / "clientcert.pem").write_bytes(_pem(cert))
    _write_key(out / "clientkey.pem", key)
    return out


# --- the daemons --------------------------------------------------------------------------------


def _libvirtd_conf(port: int, tls: bool) -> str:
    common = (
        f'listen_addr = "{ADDRESS}"\n'
        'auth_unix_ro = "none"\nauth_unix_rw = "none"\n'
        'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"\n'
        "keepalive_interval = 5\nkeepalive_count = 5\n"
    )
    if tls:
        return common + (
            f'listen_tcp = 0\nlisten_tls = 1\ntls_port = "{port}"\nauth_tls = "none"\n'
            'key_file = "/etc/libvirt/pki/serverkey.pem"\n'
            'cert_file = "/etc/libvirt/pki/servercert.pem"\n'
            'ca_file = "/etc/libvirt/pki/cacert.pem"\n'
            f'tls_allowed_dn_list = ["{CLIENT_DN}"]\n'
        )
    return common + f'listen_tcp = 1\nlisten_tls = 0\ntcp_port = "{port}"\nauth_tcp = "none"\n'


def _qemu_conf(vnc_min: int, vnc_max: int) -> str:
    return (
        'user = "libvirt-qemu"\ngroup = "kvm"\ndynamic_ownership = 1\n'
        "cgroup_controllers = [ ]\n"
        f"remote_display_port_min = {vnc_min}\nremote_display_port_max = {vnc_max}\n"
        # Hosts on one address: QEMU's own port ranges must not collide either.
        f"migration_port_min = {vnc_min + 40}\nmigration_port_max = {vnc_max + 40}\n"
    )


@dataclass
class LibvirtHost:
    """One isolated libvirtd; ``uri`` reaches it (TLS: with the allow-listed client's pki)."""

    root: Path
    name: str
    tls: bool
    port: int
    vnc_range: tuple[int, int]
    pki: Pki | None = None
    client_pki: Path | None = None
    daemon: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def uri(self) -> str:
        if self.tls:
            return f"qemu+tls://{ADDRESS}:{self.port}/system?pkipath={self.client_pki}"
        return f"qemu+tcp://{ADDRESS}:{self.port}/system"

    def folder(self, key: str) -> Path:
        """This host's ``/etc/libvirt`` (``etc``), ``/run/libvirt`` (``run``)… as seen from here."""
        return self.root / key

    @property
    def pool_dir(self) -> Path:
        """``/var/lib/libvirt/images`` of this host, as seen from here."""
        return self.root / "lib" / "images"

    @classmethod
    @contextlib.contextmanager
    def start(
        cls, root: Path, *, name: str | None = None, tls: bool = False
    ) -> Iterator[LibvirtHost]:
        host = cls.create(root, name=name, tls=tls)
        try:
            host.start_daemon()
            yield host
        finally:
            host.stop()

    @classmethod
    def create(cls, root: Path, *, name: str | None = None, tls: bool = False) -> LibvirtHost:
        if shutil.which("libvirtd") is None or shutil.which("virtlogd") is None:
            raise RuntimeError(
                "libvirtd/virtlogd not found: apt-get install libvirt-daemon "
                "libvirt-daemon-driver-qemu libvirt-clients"
            )
        ensure_qemu_user()
        for key, target in FOLDERS.items():
            (root / key).mkdir(parents=True, exist_ok=True)
            Path(target).mkdir(parents=True, exist_ok=True)  # the mount point
        (root / "log" / "qemu").mkdir(mode=0o700, exist_ok=True)  # libvirt-daemon-system has it
        with _seed_lock:
            if any(_seed_dir().glob("*.xml")):
                shutil.copytree(_seed_dir(), root / _CAPS, dirs_exist_ok=True)
        vnc = _free_range(20)
        host = cls(root, name or root.name, tls, free_port(), (vnc, vnc + 19))
        etc = root / "etc"
        (etc / "libvirtd.conf").write_text(_libvirtd_conf(host.port, tls))
        (etc / "qemu.conf").write_text(_qemu_conf(*host.vnc_range))
        (etc / "virtlogd.conf").write_text('log_outputs = "3:file:/var/log/libvirt/virtlogd.log"\n')
        if tls:
            host.pki = _make_server_pki(etc / "pki")
            host.client_pki = make_client_pki(host.pki, root / "client-pki")
        return host

    def _script(self) -> str:
        mounts = "".join(
            f"mount --bind {self.root / key} {target} && " for key, target in FOLDERS.items()
        )
        return (
            f"{mounts}"
            "virtlogd -d -p /run/libvirt/virtlogd.pid && "
            "exec libvirtd -l -p /run/libvirt/libvirtd.pid"
        )

    def start_daemon(self) -> None:
        """Start virtlogd (if not running) and libvirtd; return once libvirtd listens."""
        if self.daemon is not None and self.daemon.poll() is None:
            return
        self._stop_virtlogd()  # a fresh one in the fresh namespace
        log = (self.root / "daemon.out").open("ab")
        try:
            self.daemon = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", self._script()],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        finally:
            log.close()
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.daemon.poll() is not None:
                raise RuntimeError(f"libvirtd of {self.name} exited: {self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection((ADDRESS, self.port), 0.2):
                self._keep_capabilities()
                return
            time.sleep(0.05)
        raise RuntimeError(f"libvirtd of {self.name} did not listen in {_START_TIMEOUT} s")

    def _keep_capabilities(self) -> None:
        """The first host of this process: probe QEMU now and keep the cache for later hosts
        (best effort: without it, each host probes on its first connection, as it would)."""
        with _seed_lock:
            seed = _seed_dir()
            if any(seed.glob("*.xml")) or shutil.which("virsh") is None:
                return
            try:
                probe = subprocess.run(
                    ["virsh", "-c", self.uri, "capabilities"], stdin=subprocess.DEVNULL,
                    capture_output=True, timeout=120, check=False,
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                return
            if probe.returncode == 0:
                for cached in (self.root / _CAPS).glob("*.xml"):
                    shutil.copy2(cached, seed / cached.name)

    def log_tail(self, lines: int = 15) -> str:
        text = ""
        for path in (self.root / "daemon.out", self.root / "log" / "libvirtd.log"):
            with contextlib.suppress(OSError):
                text += path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop_daemon(self, sig: int = signal.SIGTERM) -> None:
        """Stop libvirtd only (by our child's pid): its QEMUs run on."""
        if self.daemon is None:
            return
        if self.daemon.poll() is None:
            self.daemon.send_signal(sig)
            try:
                self.daemon.wait(15)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        self.daemon = None

    def _pid_from(self, path: Path) -> int | None:
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            return None

    def _stop_virtlogd(self) -> None:
        pid = self._pid_from(self.root / "run" / "virtlogd.pid")
        if pid is not None and _is_process(pid, "virtlogd"):
            _end(pid)

    def qemu_pids(self) -> dict[str, int]:
        """Domain name -> pid of each QEMU this host runs (from libvirt's pid files)."""
        found = {}
        for pidfile in sorted((self.root / "run" / "qemu").glob("*.pid")):
            pid = self._pid_from(pidfile)
            if pid is not None and _is_process(pid, "qemu-system"):
                found[pidfile.stem] = pid
        return found

    def stop(self) -> None:
        """Stop libvirtd, every QEMU it started and virtlogd, each by pid."""
        self.stop_daemon()
        for pid in self.qemu_pids().values():
            _end(pid, signal.SIGKILL)
        self._stop_virtlogd()


def _is_process(pid: int, name: str) -> bool:
    try:
        return name in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return False


def _end(pid: int, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return  # a zombie of another parent: it has ended
        except OSError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
