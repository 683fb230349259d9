"""The pure core: plain data in, plain data out, no I/O (enforced by import-linter).

Everything here works on numpy arrays indexed by global core index so that hot paths stay vectorised.
"""
