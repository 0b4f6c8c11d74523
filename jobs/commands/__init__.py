"""One module per `mf` sub-command group. Each defines ``register(subparsers)``; :mod:`jobs.cli` imports them all."""

COMMAND_MODULES = [
    "jobs.commands.weights",
    "jobs.commands.prepare",
    "jobs.commands.retarget",
    "jobs.commands.demo",
    "jobs.commands.submit",
    "jobs.commands.dataset",
    "jobs.commands.serve",
]
