"""One module per `mf` sub-command group. Each defines ``register(subparsers)``.

Modules listed in ``COMMAND_MODULES`` are imported lazily by :mod:`jobs.cli`, so a
missing optional dependency of one command never breaks the others.
"""

COMMAND_MODULES = [
    "jobs.commands.weights",
    "jobs.commands.edit",
    "jobs.commands.prepare",
    "jobs.commands.retarget",
    "jobs.commands.demo",
    "jobs.commands.submit",
    "jobs.commands.dataset",
    "jobs.commands.serve",
]
