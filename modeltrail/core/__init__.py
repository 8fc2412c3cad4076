"""The engine: the event log, the projections folded from it and the registry commands."""
