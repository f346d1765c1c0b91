"""Process-level I/O: crash-safe stage outputs, telemetry, the compilation cache and console."""
