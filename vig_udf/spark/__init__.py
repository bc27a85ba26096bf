"""Spark adapters: thin wrappers that run the pure layers inside Spark tasks."""
