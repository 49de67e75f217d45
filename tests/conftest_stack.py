"""Fixtures for the whole stack (filled in below)."""
