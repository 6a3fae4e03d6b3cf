"""The `aesq` command line."""
