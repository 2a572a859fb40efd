"""Upstream engines: recognition servers the operator already runs (OpenAI-compatible, FunASR
runtime), reached over HTTP."""
