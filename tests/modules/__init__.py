"""Tests of transmamba.modules."""
