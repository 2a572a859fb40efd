"""earmark's service: the HTTP API, the command line, the engines and the lookup pipeline.

The folders are the parts, in the order a request meets them:
`api/` (routes, errors, uploads, keys, cache control, the OpenAI surface) calls
`pipeline/` (the tier walk, the fuzzy tier, the profile, the decode budget, the event log),
which runs an engine from `engines/` (local models, the pool, `upstream/` servers) on a miss.
Beside the request path: `console/` (the web console) and `ops/` (audit, tune, batch).
`cli`, `config` and `metrics` serve them all.
"""
