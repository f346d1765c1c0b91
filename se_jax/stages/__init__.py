"""Stages: the I/O edge of each step (read inputs, resume, write outputs beside config.json)."""
