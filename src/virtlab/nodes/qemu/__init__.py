"""The QEMU node driver: command line (argv), process, monitor (QMP), host probe."""
