"""TURN: coturn's configuration, credentials, the end-to-end check."""
