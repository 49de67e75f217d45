"""Fixtures for the hub tests (see the module's own tests)."""
