"""The lookup pipeline: the tier walk, the fuzzy tier's search and verification, the
recognition profile, the decode budget and the event log."""
