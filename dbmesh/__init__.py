"""dbmesh: a MySQL-protocol database mesh sidecar."""

from . import native

# Before any hot-path module is imported: an out-of-date compiled build must not shadow its
# edited source (dbmesh/native.py).
native.prefer_sources_if_stale()
