"""Federation: the allow-list, key servers, the self-check."""
