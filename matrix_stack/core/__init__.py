"""The pipeline: debconf, stack.yaml, Settings, render, plan, write, validate, restart."""
