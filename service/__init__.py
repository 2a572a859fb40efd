"""earmark's service: the HTTP API, the command line, the engines and the lookup pipeline."""
