"""The pure domain: ids, canonical forms, keys, partitions, manifest, selection, planner,
state machines and events. Nothing here performs I/O or reads the clock."""
