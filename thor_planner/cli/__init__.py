"""The ``thor-plan`` command line (typer): parse the options, call the package, print.

Thin by design: no math here; library errors are mapped to one-line messages that name the flag.
It sits above every stage (it may import any of them); nothing in the package imports it.
"""
