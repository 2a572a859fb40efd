"""The HTTP API: routes, errors, uploads, keys and cache control, and the OpenAI surface."""
