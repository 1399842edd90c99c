"""Batch jobs: materialize features into Redis, build training sets, train and publish models."""
