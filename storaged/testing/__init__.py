"""Test support that ships with the package: a recording store for crash-state exploration."""
