"""`python -m service` runs the `earmark` command line."""

from service.cli import main

main()
