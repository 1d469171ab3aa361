"""Experiment runner for pwconv: configs, data, training, evaluation and reports."""
