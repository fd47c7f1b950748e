"""`python -m punie` runs the CLI (the supervisor starts the agent this way)."""

from punie.cli import main

if __name__ == "__main__":
    main(prog_name="punie")
