"""Recipes: each supplies the engine (transmamba.training.engine) with its model, data, loss and evaluation."""
