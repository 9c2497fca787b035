"""Mapping the hospital's org tree (policies/) into Matrix accounts, spaces and rooms."""
