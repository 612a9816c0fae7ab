"""How workers come to exist: local processes (`launch.local`), actors on a Ray cluster
(`launch.ray`, one per GPU) and the SPMD runner every rank of a torchrun job uses
(`launch.spmd`, entry `python -m launch.torchrun`); `launch.worker` is what each worker does to
start. Nothing here imports the user-facing Python API or CLI."""
