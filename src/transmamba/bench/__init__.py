"""Benchmarks: each submodule exposes `run(quick: bool) -> list[dict]` rows; `transmamba bench <what>`."""
