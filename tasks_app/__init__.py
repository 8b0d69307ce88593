"""Tasks: submission, execution with an at-least-once guarantee, results and files."""
