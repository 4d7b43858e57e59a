"""Accounts: who owns every deal and purchase, and how a caller proves to be one (service.py)."""
