"""Element web: download, verify, unpack, compress, switch releases."""
