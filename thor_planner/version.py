"""The package version (one place: the plan, device profiles and the CLI read it here)."""

__version__ = "0.1.0"
