"""Retention models (policies, legal holds, audit trail, sweep runs)."""
