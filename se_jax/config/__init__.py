"""The run configuration: typed sections built from the ml_collections files, their checks, dtypes."""
