"""The web console: its pages, sign-in sessions and history, with templates and static files."""
