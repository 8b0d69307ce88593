"""Storage objects: batched, idempotent deletion and listing; S3 specifics."""
