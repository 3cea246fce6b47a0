"""backbeat-edge: follow a BACKBEAT cluster beat and fire hardware actions on it."""

# The one place the version is written: pyproject reads it, the claims and --version report it.
__version__ = "0.1.0"
