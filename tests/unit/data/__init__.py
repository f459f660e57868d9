"""Shared test data for the unit tests."""
