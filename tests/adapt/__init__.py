"""Tests of transmamba.adapt."""
