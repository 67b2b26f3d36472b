"""Experiments from the lecture, run on bundled or generated data: ``python -m train.experiments NAME``."""
