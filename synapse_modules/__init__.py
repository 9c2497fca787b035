"""Synapse modules that enforce the hospital policy inside the homeserver.

Each module is a thin layer: it gathers inputs from Synapse, asks a pure function in
``carematrix.rules`` for a verdict, and applies it.
"""
