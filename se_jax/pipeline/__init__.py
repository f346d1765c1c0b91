"""The experiment: its plan and directory layout, the stages (I/O edge), the sweep driver, reports."""
