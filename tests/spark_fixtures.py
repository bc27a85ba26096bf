"""Spark fixtures: filled in with the lake and Spark jobs."""
