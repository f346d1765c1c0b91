"""ml_collections config files. A package so that config files can `from configs import base`."""
