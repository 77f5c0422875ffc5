"""Judging a health code: the verifier chain, HC1, trust list, online lookup, screen colour."""
