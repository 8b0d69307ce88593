"""The audit trail: building records, and the CSV export."""
