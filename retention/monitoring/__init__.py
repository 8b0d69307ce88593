"""What retention tells operators: metrics, alerts, reports."""
