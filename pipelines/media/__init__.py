"""Media: probing and decoding inputs (video files, ``frame_{i}`` folders) into constant-rate, upright,
square-pixel RGB, time (:mod:`pipelines.media.timeline`), frame geometry, H.264 encoding, fsspec
storage with atomic writes, and :class:`InputError` for bad inputs. The bottom layer of :mod:`pipelines`."""
from pipelines.media.errors import InputError
from pipelines.media.geometry import fit_frame, fit_frames, fit_geometry
from pipelines.media.probe import MediaInfo, probe_media
from pipelines.media.video import VideoInfo, iter_frames, probe_video, read_fitted_frames, read_frames

__all__ = ["InputError", "MediaInfo", "VideoInfo", "fit_frame", "fit_frames", "fit_geometry", "iter_frames",
           "probe_media", "probe_video", "read_fitted_frames", "read_frames"]
