"""Launching runs: config-driven sweeps (launch/sweep.py), one launcher per kind of machine."""
