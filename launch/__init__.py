"""How workers come to exist: local processes, the torchrun entry, Ray actors."""
