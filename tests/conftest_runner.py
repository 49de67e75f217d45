"""Fixtures for the runner tests (see the module's own tests)."""
