"""The data: backup, restore, the move to PostgreSQL, row counts."""
