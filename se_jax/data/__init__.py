"""Datasets (TFDS builders and data sources), splits and prompt formats."""
