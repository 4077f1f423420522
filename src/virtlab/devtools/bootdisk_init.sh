#!/bin/sh
# /init of the virtlab boot disk's initramfs (busybox sh, PID 1).
# Set up the system, then hand PID 1 over to busybox init (see /etc/inittab), which runs
# /etc/virtlab/shell (prints the boot marker, then a root shell) on ttyS0 and tty1,
# acpid for the ACPI power button, and poweroff.
/bin/busybox mkdir -p /proc /sys /dev /tmp /root /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp

# Kernel modules, listed in dependency order.
while read -r module; do
    [ -n "$module" ] && insmod "/lib/modules/$module"
done </etc/virtlab/modules

ifconfig lo 127.0.0.1 netmask 255.0.0.0 up

name=@DEFAULT_HOSTNAME@
for word in $(cat /proc/cmdline); do
    case "$word" in
        virtlab.hostname=?*) name="${word#virtlab.hostname=}" ;;
    esac
done
hostname "$name"
echo "$name" >/etc/hostname

echo "virtlab guest $name, Linux $(uname -r)"
exec /bin/busybox init
