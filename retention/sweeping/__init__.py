"""The sweeps: their runs, the drain loop, and where claimed batches go."""
