"""Tests of transmamba.models."""
