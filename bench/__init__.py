"""Benchmarks that run against real services and the real fleet (``make bench``)."""
