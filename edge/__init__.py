"""backbeat-edge: follow a BACKBEAT cluster beat and fire hardware actions on it."""

__version__ = "0.1.0"
