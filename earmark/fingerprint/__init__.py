"""Audio in, hashes and features out: pure functions with no network or storage I/O.

earmark's lookup pipeline calls this package to turn uploaded bytes into the keys and
fingerprints it looks up; nothing here imports `index` or `service`.
"""
