"""Scheduler service: the live worker pool, placement, leases and reputation."""
