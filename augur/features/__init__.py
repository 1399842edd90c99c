"""Features for serving: read plans from a Feast registry, the Redis online reader and writer.

Importing this package is cheap; Feast itself is imported only by `augur.features.repo`.
"""
