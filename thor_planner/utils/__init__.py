"""Leaf helpers every stage may use: user errors, atomic writes, field-named validation, user
imports (``pkg.module:factory``) and the progress protocol.

Exports nothing at package level; import the module you need (``thor_planner.utils.errors``).
Must not import any other part of ``thor_planner`` (these are the bottom of the import order).
"""
