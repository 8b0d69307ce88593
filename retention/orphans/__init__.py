"""Orphaned storage objects: the listing, deciding, deleting and reporting them."""
