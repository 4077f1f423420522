"""Disks on a libvirt host: base images pushed once as volumes, node overlays backed by them.

Everything goes through libvirt (nothing of virtlab's runs on a host): a storage pool named
``virtlab`` (a folder, ``/var/lib/libvirt/virtlab`` unless the host defines that pool itself),
``virStorageVolUpload`` streams for the bytes, ``virStorageVolDownload`` to check them.

* **A base reaches a host once.** Its volume is named after its content
  (``base-<sha256[:32]>.qcow2``) and is *sealed* by a second, tiny volume
  (``….sha256``) written only after the upload was read back through libvirt and its
  sha256 matched. A base without its seal (a push cut short) is deleted and pushed again.
  Reading back is the only check that needs nothing but libvirt; it costs a second transfer
  (a pool on a folder the server can read would be cheaper, and is honest only where that
  folder *is* the host's: a shared file system, or these tests).
* **Bases are never re-owned or written.** The volume is created mode 0644 in a 0755 pool, so
  QEMU (``libvirt-qemu`` on Debian) reads it as it is; domains name it with
  ``<seclabel model='dac' relabel='no'/>`` (:mod:`virtlab.hosts.domain`).
* **A node's disk** is ``node-<id>.qcow2``, a qcow2 (v3) volume with a ``<backingStore>`` on the
  base (constant time, made by the host's qemu-img), or blank. A wipe deletes and recreates it.
  A lab archive downloads it as it is, and uploads an archived one over a fresh one
  (``download_disk``, ``upload_disk``).
* **Bases go when their image goes** (:meth:`HostStorage.remove_bases`): a base and its seal
  are deleted when the caller dooms its sha256, unless a volume of the pool is backed by it
  (the seal first, so a deletion cut short leaves an unsealed base, pushed again if needed).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import os
import re
import struct
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import libvirt

from virtlab.hosts.connection import HostConnection
from virtlab.hosts.errors import HostFailure

__all__ = ["POOL_NAME", "BaseVolume", "HostStorage", "file_sha256", "qcow2_virtual_size"]

POOL_NAME = "virtlab"
POOL_PATH = "/var/lib/libvirt/virtlab"
_CHUNK = 1 << 20
_BASE = re.compile(r"base-([0-9a-f]{32})\.(?:qcow2|img)")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def qcow2_virtual_size(path: Path) -> int | None:
    """The guest-visible size a qcow2 header claims, or None when ``path`` is not qcow2."""
    with path.open("rb") as f:
        header = f.read(32)
    if len(header) < 32 or header[:4] != b"QFI\xfb":
        return None
    return int(struct.unpack_from(">Q", header, 24)[0])


@dataclass(frozen=True)
class BaseVolume:
    """A base image on a host: its volume's path there, its sha256, its virtual size."""

    name: str
    path: PurePosixPath
    sha256: str
    format: str  # qcow2 | raw
    virtual_size: int


def _volume_xml(name: str, capacity: int, fmt: str, mode: str = "0644",
                backing: BaseVolume | None = None) -> str:  # fmt: skip
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = name
    ET.SubElement(vol, "capacity", unit="bytes").text = str(capacity)
    ET.SubElement(vol, "allocation", unit="bytes").text = "0"
    target = ET.SubElement(vol, "target")
    ET.SubElement(target, "format", type=fmt)
    if fmt == "qcow2":  # libvirt makes qcow2 v2 (0.10) unless told: v3, as local disks are
        ET.SubElement(target, "compat").text = "1.1"
    perms = ET.SubElement(target, "permissions")
    ET.SubElement(perms, "mode").text = mode
    if backing is not None:
        store = ET.SubElement(vol, "backingStore")
        ET.SubElement(store, "path").text = str(backing.path)
        ET.SubElement(store, "format", type=backing.format)
    return ET.tostring(vol, encoding="unicode")


def _pool_xml(path: str) -> str:
    return (
        f"<pool type='dir'><name>{POOL_NAME}</name><target><path>{path}</path>"
        "<permissions><mode>0755</mode></permissions></target></pool>"
    )


class HostStorage:
    """The ``virtlab`` pool of one host; see the module docstring."""

    def __init__(self, host: HostConnection, pool_path: str = POOL_PATH) -> None:
        self.host = host
        self.pool_path = pool_path
        self._locks: collections.defaultdict[str, asyncio.Lock] = collections.defaultdict(
            asyncio.Lock
        )

    # -- the pool -------------------------------------------------------------------------------

    async def pool(self) -> libvirt.virStoragePool:
        conn = self.host.conn
        return await self.host.call("open its virtlab storage pool", self._pool_blocking, conn)

    def _pool_blocking(self, conn: libvirt.virConnect) -> libvirt.virStoragePool:
        try:
            pool = conn.storagePoolLookupByName(POOL_NAME)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise
            pool = conn.storagePoolDefineXML(_pool_xml(self.pool_path), 0)
            pool.build(0)
            pool.setAutostart(1)
        if not pool.isActive():
            pool.create(0)
        return pool

    async def _lookup(self, name: str) -> libvirt.virStorageVol | None:
        pool = await self.pool()

        def lookup() -> libvirt.virStorageVol | None:
            try:
                return pool.storageVolLookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                    return None
                raise

        return await self.host.call(f"look up volume {name}", lookup)

    async def _delete(self, name: str) -> None:
        vol = await self._lookup(name)
        if vol is not None:
            await self.host.call(f"delete volume {name}", vol.delete, 0)

    # -- bases ----------------------------------------------------------------------------------

    async def push_base(self, local: Path, sha256: str | None = None) -> BaseVolume:
        """The base ``local`` on this host: pushed and checked the first time, found after.

        ``sha256`` is the catalog's; the file is hashed when it is not given.
        """
        digest = sha256 or await asyncio.to_thread(file_sha256, local)
        virtual = await asyncio.to_thread(qcow2_virtual_size, local)
        fmt = "qcow2" if virtual is not None else "raw"
        size = local.stat().st_size
        name = f"base-{digest[:32]}.{'qcow2' if fmt == 'qcow2' else 'img'}"
        async with self._locks[name]:
            base = BaseVolume(name, PurePosixPath(self.pool_path) / name, digest, fmt,
                              virtual if virtual is not None else size)  # fmt: skip
            if await self._sealed(name, digest, size):
                return base
            await self._delete(name + ".sha256")
            await self._delete(name)
            pool = await self.pool()
            vol = await self.host.call(
                f"create volume {name}", pool.createXML, _volume_xml(name, size, "raw"), 0
            )
            sent = await self.host.call(f"upload {local.name} to {name}", self._upload_file,
                                        vol, local, size)  # fmt: skip
            if sent != digest:
                await self._delete(name)
                raise HostFailure(
                    f"{local} changed while it was pushed to host {self.host.name} (sha256 "
                    f"{sent}, expected {digest}); push it again", self.host.name,
                )  # fmt: skip
            there = await self.host.call(f"read back {name}", self._download_hash, vol)
            if there != digest:
                await self._delete(name)
                raise HostFailure(
                    f"{name} on host {self.host.name} does not match {local} after the push "
                    f"(sha256 {there}, expected {digest}); it was deleted: push it again, and "
                    "check the host's storage if it happens twice", self.host.name,
                )  # fmt: skip
            seal = f"{digest}  {name}\n".encode()
            seal_vol = await self.host.call(
                f"create volume {name}.sha256", pool.createXML,
                _volume_xml(name + ".sha256", len(seal), "raw"), 0,
            )  # fmt: skip
            await self.host.call(f"seal {name}", self._upload_bytes, seal_vol, seal)
            return base

    async def remove_bases(self, doomed: Callable[[str], bool]) -> list[str]:
        """Delete each base (and its seal) whose sha256 ``doomed`` says must go, unless a
        volume of the pool is backed by it; the names of the bases deleted."""
        pool = await self.pool()
        return await self.host.call("delete base images no image uses", _remove_bases, pool,
                                    doomed)  # fmt: skip

    async def _sealed(self, name: str, digest: str, size: int) -> bool:
        seal, vol = await self._lookup(name + ".sha256"), await self._lookup(name)
        if seal is None or vol is None:
            return False
        text = await self.host.call(f"read the seal of {name}", self._download_bytes, seal)
        info = await self.host.call(f"look at {name}", vol.info)
        return text.decode(errors="replace").split() == [digest, name] and info[1] >= size

    def _upload_file(self, vol: libvirt.virStorageVol, local: Path, size: int) -> str:
        """Stream ``local`` into ``vol``; the sha256 of exactly what was sent."""
        digest = hashlib.sha256()
        stream = self.host.conn.newStream(0)
        vol.upload(stream, 0, size, 0)
        with local.open("rb") as f:

            def read(_stream: libvirt.virStream, nbytes: int, _opaque: object) -> bytes:
                chunk = f.read(min(nbytes, _CHUNK))
                digest.update(chunk)
                return chunk

            stream.sendAll(read, None)
        stream.finish()
        return digest.hexdigest()

    def _upload_bytes(self, vol: libvirt.virStorageVol, data: bytes) -> None:
        stream = self.host.conn.newStream(0)
        vol.upload(stream, 0, len(data), 0)
        view = memoryview(data)
        while view:
            sent = stream.send(bytes(view[:_CHUNK]))
            view = view[sent:]
        stream.finish()

    def _download_hash(self, vol: libvirt.virStorageVol) -> str:
        digest = hashlib.sha256()
        stream = self.host.conn.newStream(0)
        vol.download(stream, 0, 0, 0)
        stream.recvAll(lambda _s, buf, _o: digest.update(buf), None)
        return digest.hexdigest()

    def _download_bytes(self, vol: libvirt.virStorageVol) -> bytes:
        parts: list[bytes] = []
        stream = self.host.conn.newStream(0)
        vol.download(stream, 0, 0, 0)
        stream.recvAll(lambda _s, buf, _o: parts.append(buf), None)
        return b"".join(parts)

    # -- node disks -----------------------------------------------------------------------------

    @staticmethod
    def disk_name(node_id: str) -> str:
        return f"node-{node_id}.qcow2"

    def disk_path(self, node_id: str) -> PurePosixPath:
        return PurePosixPath(self.pool_path) / self.disk_name(node_id)

    async def create_disk(self, node_id: str, base: BaseVolume | None, size_mb: int | None) -> str:
        """A fresh disk for the node (an overlay on ``base``, or blank); the old one goes.
        Returns the new volume's key (it changes with every new disk)."""
        name = self.disk_name(node_id)
        await self._delete(name)
        capacity = base.virtual_size if base is not None else (size_mb or 1024) << 20
        xml = _volume_xml(name, capacity, "qcow2", "0600", base)
        pool = await self.pool()
        vol = await self.host.call(f"create the disk of node {node_id}", pool.createXML, xml, 0)
        return str(await self.host.call("read a volume key", vol.key))

    async def disk_volume(self, node_id: str) -> libvirt.virStorageVol | None:
        return await self._lookup(self.disk_name(node_id))

    async def disk_key(self, node_id: str) -> str | None:
        vol = await self._lookup(self.disk_name(node_id))
        return None if vol is None else str(await self.host.call("read a volume key", vol.key))

    async def delete_disk(self, node_id: str) -> None:
        await self._delete(self.disk_name(node_id))

    async def download_disk(self, node_id: str, dest: Path) -> None:
        """The node's disk volume, byte for byte, into the local file ``dest``."""
        vol = await self._lookup(self.disk_name(node_id))
        if vol is None:
            raise HostFailure(f"node {node_id} has no disk on host {self.host.name}; wipe it to "
                              "make one", self.host.name)  # fmt: skip
        await self.host.call(f"download the disk of node {node_id}", self._download_file, vol,
                             dest)  # fmt: skip

    async def upload_disk(self, node_id: str, source: Path) -> None:
        """Write the local qcow2 ``source`` over the node's disk volume, whose size, format and
        backing file libvirt keeps as they were made (``source`` must be backed by the same
        base, named by its path on this host: :meth:`disk_backing`). Padded with zeros to at
        least the volume's length, since an upload writes over a file without truncating it."""
        vol = await self._lookup(self.disk_name(node_id))
        if vol is None:
            raise HostFailure(f"node {node_id} has no disk on host {self.host.name} to write "
                              "to", self.host.name)  # fmt: skip
        flags = libvirt.VIR_STORAGE_VOL_GET_PHYSICAL
        physical = (await self.host.call("look at a disk", vol.infoFlags, flags))[2]
        if source.stat().st_size < physical:
            await asyncio.to_thread(os.truncate, source, physical)
        size = source.stat().st_size
        await self.host.call(f"upload the disk of node {node_id}", self._upload_file, vol,
                             source, size)  # fmt: skip

    async def disk_backing(self, node_id: str) -> str | None:
        """The path on this host of the base the node's disk volume is backed by."""
        vol = await self._lookup(self.disk_name(node_id))
        if vol is None:
            return None
        xml = await self.host.call("read a volume", vol.XMLDesc, 0)
        return ET.fromstring(xml).findtext("backingStore/path")

    def _download_file(self, vol: libvirt.virStorageVol, dest: Path) -> None:
        stream = self.host.conn.newStream(0)
        vol.download(stream, 0, 0, 0)
        with dest.open("wb") as f:
            stream.recvAll(lambda _s, buf, out: out.write(buf), f)
        stream.finish()


def _remove_bases(pool: libvirt.virStoragePool, doomed: Callable[[str], bool]) -> list[str]:
    volumes = {vol.name(): vol for vol in pool.listAllVolumes(0)}
    backing = set()
    for name, vol in volumes.items():
        if not _BASE.fullmatch(name) and not name.endswith(".sha256"):
            path = ET.fromstring(vol.XMLDesc(0)).findtext("backingStore/path")
            if path:
                backing.add(PurePosixPath(path).name)
    gone = []
    for name, vol in sorted(volumes.items()):
        found = _BASE.fullmatch(name)
        if found is None or name in backing or not doomed(found[1]):
            continue
        seal = volumes.get(name + ".sha256")
        if seal is not None:
            seal.delete(0)
        vol.delete(0)
        gone.append(name)
    return gone
