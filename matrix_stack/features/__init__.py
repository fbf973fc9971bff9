"""What the stack does beyond the pipeline, one module or package each."""
