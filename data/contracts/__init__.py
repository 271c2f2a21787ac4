"""Contracts of the demo lake (importable because the lake root is on the import path)."""
