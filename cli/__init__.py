"""The ``thor-plan`` command line."""
