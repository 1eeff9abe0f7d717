"""Tests of transmamba.ops."""
