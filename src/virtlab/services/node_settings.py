"""What a user asks a node to be (``NodeSettings``, checked), and the NICs a node record
describes: data NICs (a cable, or user-mode networking towards a NAT node) and the optional
management NIC after them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from virtlab.catalog import NodeRecord
from virtlab.errors import InvalidRequest
from virtlab.nodes.names import stable_mac, validate_existing_name, validate_name
from virtlab.nodes.qemu.argv import MAX_NICS, check_extra_args
from virtlab.nodes.spec import DiskBus, Forward, NicModel, NicSpec, UserNet

__all__ = ["NodeSettings", "nic_specs"]


@dataclass(frozen=True)
class NodeSettings:
    """What a user asks for; every field is checked before anything is made."""

    name: str
    image: str
    lab: str = "default"
    cpus: int = 1
    ram_mb: int = 256
    disk_bus: DiskBus = DiskBus.VIRTIO
    nics: int = 1
    nic_model: NicModel = NicModel.VIRTIO
    disk_size_mb: int | None = None  # only for an ISO image: the blank disk beside it
    serial: bool = True
    vnc: bool = True
    extra_args: tuple[str, ...] = ()
    kind: str = ""
    management: dict = field(default_factory=dict)  # user-mode NICs: see NodeRecord
    position: tuple[float, float] | None = None
    host: str | None = None  # a host by name; None: placed by the placement policy

    def checked(self, *, new_name: bool = True) -> NodeSettings:
        """Every field checked; the name by today's rule when it is new (a node made before
        the rule keeps its name through other edits)."""
        (validate_name if new_name else validate_existing_name)(self.name)
        if not 1 <= self.cpus <= 64:
            raise InvalidRequest(f"cpus must be between 1 and 64, not {self.cpus}")
        if not 16 <= self.ram_mb <= 1 << 20:
            raise InvalidRequest(f"ram_mb must be between 16 and 1048576, not {self.ram_mb}")
        extra = 1 if "mgmt" in self.management else 0
        if not 0 <= self.nics <= MAX_NICS - extra:
            raise InvalidRequest(
                f"nics must be between 0 and {MAX_NICS - extra}, not {self.nics}"
                + (" (the management interface takes one more)" if extra else "")
            )
        return replace(self, extra_args=check_extra_args(self.extra_args))


def nic_specs(record: NodeRecord) -> tuple[NicSpec, ...]:
    model = NicModel(record.nic_model)
    nat = record.management.get("nat", {})
    nics = [
        NicSpec(i, model, stable_mac(record.id, i), user=_user_net(nat.get(str(i))))
        for i in range(record.nics)
    ]
    if "mgmt" in record.management:
        mgmt = _user_net(record.management["mgmt"])
        nics.append(NicSpec(record.nics, model, stable_mac(record.id, record.nics), user=mgmt))
    return tuple(nics)


def _user_net(raw: dict | None) -> UserNet | None:
    if raw is None:
        return None
    forwards = tuple(Forward(str(p), int(h), int(g)) for p, h, g in raw.get("forwards", []))
    return UserNet(forwards=forwards, restrict=bool(raw.get("restrict", True)))
