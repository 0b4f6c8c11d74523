"""Entry points: the `mf` CLI, Ray Jobs submission, dataset schedules and the Serve app."""
