"""The one training loop (engine.py) and what it owns: optimizer groups and lr schedule, metrics, the run lock."""
