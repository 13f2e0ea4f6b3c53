"""Inference: one generation engine behind the terminal chat, the demo and evaluation."""
