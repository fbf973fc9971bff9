"""matrix-stack-admin: one module per command group; main builds the parser."""
