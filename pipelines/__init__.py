"""Media I/O, poses, masks, windows, stitching, and the Ray Data stages of the batch pipeline.

Modules are imported explicitly (``from pipelines import windows``); this package imports nothing heavy on its own.
"""
