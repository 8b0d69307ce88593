"""The deletion protocol: the fence, the ledger, claims, and the task, result and shadow purges."""
