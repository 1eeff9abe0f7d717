"""Tests of transmamba.data."""
