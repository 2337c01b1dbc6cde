"""Measurement tools run by hand (python -m tests.tools.NAME), each with a small test."""
