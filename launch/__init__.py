"""How workers come to exist: local processes (`launch.local`) and the SPMD runner every rank
of a torchrun job uses (`launch.spmd`, entry `python -m launch.torchrun`); `launch.worker` is
what each worker does to start. Nothing here imports the user-facing Python API or CLI."""
