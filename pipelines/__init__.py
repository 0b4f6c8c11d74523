"""MotionFollower as a batch video pipeline, in four layers (imports point downwards only; import-linter checks it):

- :mod:`pipelines.batch` — manifests, run config, stage functions, Ray stages and driver, single-request path, metrics
- :mod:`pipelines.windows` — window planning, ids, stitching
- :mod:`pipelines.conditioning` — poses, alignment, masks, renders, per-window model inputs, ``mf prepare`` layout
- :mod:`pipelines.media` — probe, decode, geometry, encode, storage, input errors
"""
