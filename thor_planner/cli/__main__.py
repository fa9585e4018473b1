"""``python -m thor_planner.cli``: the same as the ``thor-plan`` command."""

from thor_planner.cli.app import main

if __name__ == "__main__":
    main()
