"""Tests of transmamba.evaluation."""
