"""Events: the v1 contract, readers for files, validation, dead letters."""
