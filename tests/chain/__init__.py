"""Tests against a live anvil chain."""
