"""Nodes: QEMU machines on copy-on-write overlays of catalog images."""
