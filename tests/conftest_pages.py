"""Fixtures for the pages tests (see the module's own tests)."""
