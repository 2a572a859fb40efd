"""`python -m earmark` runs the `earmark` command line."""

from earmark.service.cli import main

# The guard matters: engine worker processes are spawned, and a spawned child imports the
# parent's __main__ module; without it every worker would run the command line again.
if __name__ == "__main__":
    main()
