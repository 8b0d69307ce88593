"""What is due for deletion and why, and what a legal hold covers."""
