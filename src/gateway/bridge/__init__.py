"""Requests the gateway sends on its own behalf, and the bridges between protocol eras.

The ``session`` stage uses this package to initialize backend sessions, to
learn which era a backend speaks, and to serve a client of one era from a
backend of the other (DESIGN section 8).
"""
