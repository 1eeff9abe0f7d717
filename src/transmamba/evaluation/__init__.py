"""Evaluators, one per kind of metric: perplexity, classification, speed."""
