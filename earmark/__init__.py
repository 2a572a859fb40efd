"""earmark: a speech-recognition cache that answers repeated audio, re-encoded copies included.

Three parts, each a package: `fingerprint` (what a recording sounds like: decoding, the robust
hash, the detail spectrum and pitch), `index` (where entries live: Redis, FAISS, their
connections) and `service` (the HTTP API, the lookup pipeline, the engines, the console and the
operator's tools). Installed under this one name so that nothing else called `service` or
`index` can shadow them.
"""
