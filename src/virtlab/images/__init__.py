"""Disk images: detection, safety, conversion and the on-disk store."""
