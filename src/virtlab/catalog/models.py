"""ORM tables. Change them only together with a new Alembic revision in ``migrations/``."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


LOCAL_HOST_NAME = "local"  # the server's own machine: a row made by migration 0006


class HostRow(Base):
    """A machine nodes run on: the local one (direct QEMU) or a libvirt host by URI."""

    __tablename__ = "hosts"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    uri: Mapped[str] = mapped_column(String(1024), unique=True)  # "local" for the local host
    state: Mapped[str] = mapped_column(String(16))  # up | down (as last seen)
    facts: Mapped[str] = mapped_column(Text, default="{}")  # JSON: versions, memory, CPUs…
    drained: Mapped[bool] = mapped_column(Boolean, default=False)  # gets no new nodes
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ImageRow(Base):
    __tablename__ = "images"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True, index=True)
    kind: Mapped[str] = mapped_column(String(16))  # disk | cdrom
    format: Mapped[str] = mapped_column(String(16))  # format of the stored file
    source_format: Mapped[str] = mapped_column(String(16))  # format it arrived in
    source_variant: Mapped[str] = mapped_column(String(64), default="")
    source_name: Mapped[str] = mapped_column(String(255), default="")  # upload's file name
    wrappers: Mapped[str] = mapped_column(String(64), default="")  # e.g. "gzip,ova"
    virtual_size: Mapped[int] = mapped_column(BigInteger)
    actual_size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))  # of the stored file
    source_sha256: Mapped[str] = mapped_column(String(64), default="")  # of the bytes uploaded
    path: Mapped[str] = mapped_column(String(1024))  # relative to the images directory
    origin: Mapped[str] = mapped_column(String(16))  # custom (uploaded) | base (found on disk)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class NodeRow(Base):
    __tablename__ = "nodes"
    __table_args__ = (UniqueConstraint("lab_id", "name", name="uq_nodes_lab_name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    lab_id: Mapped[str] = mapped_column(ForeignKey("labs.id"), index=True)
    name: Mapped[str] = mapped_column(String(63), index=True)
    image: Mapped[str] = mapped_column(String(255), index=True)  # a catalog image's name
    disk_size_mb: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # cdrom boots
    cpus: Mapped[int] = mapped_column(Integer)
    ram_mb: Mapped[int] = mapped_column(Integer)
    disk_bus: Mapped[str] = mapped_column(String(16))
    nics: Mapped[int] = mapped_column(Integer)
    nic_model: Mapped[str] = mapped_column(String(32))
    serial: Mapped[bool] = mapped_column(Boolean)
    vnc: Mapped[bool] = mapped_column(Boolean)
    extra_args: Mapped[str] = mapped_column(Text, default="[]")  # JSON list
    telnet_port: Mapped[int | None] = mapped_column(Integer, nullable=True, unique=True)
    vnc_port: Mapped[int | None] = mapped_column(Integer, nullable=True, unique=True)
    state: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text, default="")  # why it crashed: QEMU's log tail
    kind: Mapped[str] = mapped_column(String(63), default="")  # from the topology file
    management: Mapped[str] = mapped_column(Text, default="{}")  # JSON: user-mode NICs
    position_x: Mapped[float | None] = mapped_column(Float, nullable=True)  # on the UI canvas
    position_y: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    host: Mapped[str] = mapped_column(
        ForeignKey("hosts.name", name="fk_nodes_host_hosts"), index=True,
        server_default=LOCAL_HOST_NAME,
    )  # fmt: skip


DEFAULT_LAB_ID = "0" * 32  # the `default` lab, made by migration 0003


class LabRow(Base):
    __tablename__ = "labs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True, index=True)
    topology: Mapped[str] = mapped_column(Text, default="")  # the file it was deployed from
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Who made it; None (the default lab, labs from before users) means admins only.
    owner_id: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", name="fk_labs_owner_id_users"), index=True, nullable=True
    )


class LinkRow(Base):
    __tablename__ = "links"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    lab_id: Mapped[str] = mapped_column(ForeignKey("labs.id"), index=True)
    a_node: Mapped[str] = mapped_column(ForeignKey("nodes.id"), index=True)
    a_iface: Mapped[int] = mapped_column(Integer)
    b_node: Mapped[str] = mapped_column(ForeignKey("nodes.id"), index=True)
    b_iface: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(8))  # up | down
    impairment: Mapped[str] = mapped_column(Text, default="{}")  # JSON: a_to_b, b_to_a
    capturing: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # A UDP tunnel (nodes on libvirt hosts): each end's port on its own host.
    a_port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    b_port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Through the server's relay: the server's UDP port each host end's tunnel talks to.
    a_relay_port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    b_relay_port: Mapped[int | None] = mapped_column(Integer, nullable=True)


class CheckpointRow(Base):
    """One checkpoint of one node: its bytes are an internal snapshot in the node's disk."""

    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("node_id", "tag", name="uq_checkpoints_node_tag"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    # Set when the checkpoint is one node's part of a lab checkpoint (the lab's nodes paused
    # together and saved under one tag).
    lab_id: Mapped[str | None] = mapped_column(
        ForeignKey("labs.id", ondelete="CASCADE"), nullable=True, index=True
    )
    tag: Mapped[str] = mapped_column(String(63))
    state: Mapped[str] = mapped_column(String(16))  # saving | ready | deleting
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    vm_state_size: Mapped[int] = mapped_column(BigInteger, default=0)  # memory + devices, bytes
    save_seconds: Mapped[float] = mapped_column(Float, default=0.0)  # how long the save took
    ram_mb: Mapped[int] = mapped_column(Integer)  # the node's memory when it was taken
    qemu_version: Mapped[str] = mapped_column(String(32), default="")
    machine: Mapped[str] = mapped_column(String(63), default="")  # resolved: pc-i440fx-7.2
    accel: Mapped[str] = mapped_column(String(8), default="")  # tcg | kvm
    detail: Mapped[str] = mapped_column(Text, default="")


class UserRow(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(32), unique=True, index=True)
    role: Mapped[str] = mapped_column(String(16))  # admin | user
    password_hash: Mapped[str] = mapped_column(Text)  # argon2id, with its parameters
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TokenRow(Base):
    """An API token or a browser session: only the sha256 of its secret is kept."""

    __tablename__ = "tokens"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # api | session
    name: Mapped[str] = mapped_column(String(63), default="")
    digest: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
