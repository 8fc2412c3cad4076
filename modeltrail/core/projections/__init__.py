"""Projections: pure folds of the log into SQL tables, the runner that feeds them,
and ``as_of``."""
