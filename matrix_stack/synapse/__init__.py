"""Talking to Synapse: its configuration files, its database, its admin API, its password hashes."""
