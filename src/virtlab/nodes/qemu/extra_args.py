"""Extra QEMU arguments a user may add to a node: an allow-list, checked option by option.

Anything that names a file, a chardev, a netdev, a monitor or a process setting is refused; the
message names the option, says why for the common ones, and lists what is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from virtlab.errors import InvalidRequest

__all__ = ["ALLOWED_EXTRA_ARGS", "check_extra_args"]


# --- extra arguments: an allow-list ---------------------------------------------------------

_DEVICE_MODELS = (
    "i6300esb", "ib700", "piix3-usb-uhci", "pvpanic", "qemu-xhci", "usb-ehci", "usb-kbd",
    "usb-mouse", "usb-tablet", "virtio-balloon-pci", "virtio-rng-pci",
)  # fmt: skip
_GLOBALS = (
    "ICH9-LPC.disable_s3", "ICH9-LPC.disable_s4", "PIIX4_PM.disable_s3", "PIIX4_PM.disable_s4",
    "kvm-pit.lost_tick_policy",
)  # fmt: skip
_SMBIOS_FIELDS = {
    "0": ("vendor", "version", "date", "release", "uefi"),
    "1": ("manufacturer", "product", "version", "serial", "uuid", "sku", "family"),
    "2": ("manufacturer", "product", "version", "serial", "asset", "location"),
    "3": ("manufacturer", "version", "serial", "asset", "sku"),
    "11": ("value",),
}
_TEXT = re.compile(r"[^\x00-\x1f\x7f]{0,128}")  # an SMBIOS string: printable, short
_OURS = re.compile(r"nic\d+|net\d+|hd0|cd0|ahci0|scsi0|serial0|qmp|disk0.*|cdrom0.*")

ALLOWED_EXTRA_ARGS: dict[str, str] = {
    "-boot": "order=/once= drive letters (c, d, n), menu=on|off, splash-time=MS, "
    "reboot-timeout=MS, strict=on|off",
    "-device": f"one of {', '.join(_DEVICE_MODELS)}, with at most id=ID",
    "-global": f"one of {', '.join(_GLOBALS)} =VALUE",
    "-k": "a keyboard layout such as en-us or de",
    "-rtc": "base=utc|localtime|YYYY-MM-DD[THH:MM:SS], clock=host|rt|vm, driftfix=none|slew",
    "-smbios": "type=0|1|2|3|11 with that type's text fields (no file= or path=)",
    "-usb": "no value: a USB controller",
    "-watchdog-action": "reset|shutdown|poweroff|pause|debug|none|inject-nmi",
}

_REFUSED = (  # (options, why): a hint for the options people try first; all others: not listed
    ("-drive -blockdev -hda -hdb -hdc -hdd -cdrom -fda -fdb -sd -mtdblock -pflash",
     "disks are attached by virtlab: set disk_bus or cdrom"),
    ("-netdev -nic -net", "NICs come from the node's nics and links"),
    ("-serial -monitor -qmp -qmp-pretty -mon -chardev -vnc -display -spice -parallel -debugcon "
     "-gdb -s", "consoles and the monitor belong to virtlab"),
    ("-m -smp -cpu -machine -M -accel -enable-kvm",
     "set ram_mb, cpus, cpu_model, machine or accel instead"),
    ("-kernel -initrd -append -dtb -bios -L -option-rom -readconfig -writeconfig -loadvm "
     "-incoming -plugin -add-fd -object -fsdev -virtfs -mem-path -D -d -trace -pidfile",
     "it makes QEMU read or write host files, or load code"),
    ("-set -sandbox -runas -chroot -daemonize -S -name -uuid -nodefaults -no-user-config -msg",
     "virtlab sets up the QEMU process itself"),
)  # fmt: skip
_HINTS = {option: why for options, why in _REFUSED for option in options.split()}


def _keyval(value: str) -> list[tuple[str, str | None]]:
    """Split QEMU's ``key=value,…`` (``,,`` is a literal comma) into (key, value or None)."""
    if value.startswith("{"):
        raise ValueError("JSON syntax is not accepted")
    items, current, i = [], "", 0
    while i < len(value):
        if value[i] == "," and value[i + 1 : i + 2] == ",":
            current, i = current + ",", i + 2
        elif value[i] == ",":
            items.append(current)
            current, i = "", i + 1
        else:
            current, i = current + value[i], i + 1
    items.append(current)
    pairs: list[tuple[str, str | None]] = []
    for item in items:
        key, sep, val = item.partition("=")
        pairs.append((key, val if sep else None))
    return pairs


def _keys(rules: dict[str, str], implied: str | None = None) -> Callable[[str], None]:
    compiled = {key: re.compile(pattern) for key, pattern in rules.items()}

    def check(value: str) -> None:
        for n, (key, val) in enumerate(_keyval(value)):
            if val is None and n == 0 and implied:
                key, val = implied, key
            if key not in compiled:
                raise ValueError(f"{key!r} is not an accepted key")
            if val is None or not compiled[key].fullmatch(val):
                raise ValueError(f"{key}={val or ''} is not an accepted value")

    return check


def _pattern(pattern: str) -> Callable[[str], None]:
    compiled = re.compile(pattern)

    def check(value: str) -> None:
        if not compiled.fullmatch(value):
            raise ValueError("not an accepted value")

    return check


def _check_device(value: str) -> None:
    (first, model), *props = _keyval(value)
    model = first if model is None else (model if first == "driver" else "")
    if model not in _DEVICE_MODELS:
        raise ValueError(f"device model {model or first!r} is not on the list")
    for key, val in props:
        if key != "id" or val is None or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]{0,31}", val):
            raise ValueError(f"only id=ID may be set, not {key}={val or ''}")
        if _OURS.fullmatch(val):
            raise ValueError(f"id {val!r} is virtlab's own")


def _check_smbios(value: str) -> None:
    (key, kind), *fields = _keyval(value)
    if key != "type" or kind not in _SMBIOS_FIELDS:
        raise ValueError(f"it must start with type={'|'.join(_SMBIOS_FIELDS)}")
    for name, text in fields:
        if name not in _SMBIOS_FIELDS[kind]:
            raise ValueError(f"{name!r} is not a field of type {kind}")
        if text is None or not _TEXT.fullmatch(text):
            raise ValueError(f"{name}= must be printable text of at most 128 characters")


def _check_global(value: str) -> None:
    name, _, setting = value.partition("=")
    if name not in _GLOBALS or not re.fullmatch(r"[A-Za-z0-9_-]{1,16}", setting):
        raise ValueError("not one of the accepted DRIVER.PROPERTY=VALUE settings")


_BOOT_KEYS = {
    "order": "[acdn]{1,4}", "once": "[acdn]{1,4}", "menu": "on|off", "strict": "on|off",
    "splash-time": r"\d{1,5}", "reboot-timeout": r"-1|\d{1,5}",
}  # fmt: skip
_RTC_KEYS = {
    "base": r"utc|localtime|\d{4}-\d\d-\d\d(T\d\d:\d\d:\d\d)?",
    "clock": "host|rt|vm", "driftfix": "none|slew",
}  # fmt: skip
_CHECKS: dict[str, Callable[[str], None] | None] = {
    "-boot": _keys(_BOOT_KEYS, implied="order"),
    "-device": _check_device,
    "-global": _check_global,
    "-k": _pattern(r"[a-z]{2}(-[a-z]{2,3})?"),
    "-rtc": _keys(_RTC_KEYS),
    "-smbios": _check_smbios,
    "-usb": None,
    "-watchdog-action": _pattern("reset|shutdown|poweroff|pause|debug|none|inject-nmi"),
}


def check_extra_args(args: Sequence[str]) -> tuple[str, ...]:
    """Return ``args`` (``--opt`` written ``-opt``) if every option is allowed, else raise
    :class:`InvalidRequest` naming the refused option and listing the allowed ones."""
    allowed = ", ".join(ALLOWED_EXTRA_ARGS)
    out: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        if not isinstance(token, str) or not token.startswith("-") or token == "-":
            raise InvalidRequest(
                f"extra QEMU argument {token!r} is not an option (a value must follow its "
                f"option); allowed options: {allowed}"
            )
        option = token[1:] if token.startswith("--") else token
        if option not in _CHECKS:
            why = _HINTS.get(option, "it is not on the allow-list")
            raise InvalidRequest(
                f"extra QEMU argument {token} is not allowed ({why}); allowed options: {allowed}"
            )
        check = _CHECKS[option]
        if check is None:
            out.append(option)
            i += 1
            continue
        if i + 1 >= len(args):
            need = ALLOWED_EXTRA_ARGS[option]
            raise InvalidRequest(f"extra QEMU argument {option} needs a value: {need}")
        value = args[i + 1]
        try:
            if not isinstance(value, str) or "\n" in value or "\0" in value:
                raise ValueError("not a single-line string")
            check(value)
        except ValueError as exc:
            raise InvalidRequest(
                f"extra QEMU argument {option} {value!r} is refused: {exc}; "
                f"{option} accepts {ALLOWED_EXTRA_ARGS[option]}"
            ) from None
        out += [option, value]
        i += 2
    return tuple(out)
