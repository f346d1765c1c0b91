"""Devices: the mesh and its sharding rules, multi-process start and host gathers."""
