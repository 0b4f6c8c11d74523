"""Batch: request and result manifests, the run configuration, the typed window task, the stage functions (no Ray),
the Ray stage classes with their resources, the driver of ``mf retarget``, the in-process single-request path the
Serve app uses, and the pipeline's metrics. The top layer of :mod:`pipelines`."""
