"""The cnnjax training and evaluation CLI: ``python -m train.main``, ``python -m train.evaluate``."""
