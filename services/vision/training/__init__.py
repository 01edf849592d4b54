"""Offline tools for the vision service (they import the simulator; the running service never does)."""
