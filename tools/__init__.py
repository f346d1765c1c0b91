"""Helper scripts: data building, cross-checks, random checkpoints for tests. Run from the repository root: python -m tools.<name>"""
