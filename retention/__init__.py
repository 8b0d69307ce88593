"""Retention: policies, sweeps, purge, audit trail."""
