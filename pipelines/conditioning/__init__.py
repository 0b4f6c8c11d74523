"""Conditioning: the inputs MotionFollower needs, made from raw videos or pose tracks.

Poses (MediaPipe, DWPose, pose-track files), alignment of the driving skeleton to the source person, masks, pose
rendering in the official style, the per-window arrays (:mod:`~pipelines.conditioning.window_inputs`) and the
``mf prepare`` folder layout (:mod:`~pipelines.conditioning.layout`). Depends on :mod:`pipelines.media` only.
"""
from pipelines.conditioning.align import (
    ALIGN_MODES,
    DEFAULT_ALIGN_MODE,
    AlignTransform,
    aligned_masks,
    apply_alignment,
    compute_alignment,
    identity_alignment,
)
from pipelines.conditioning.layout import LAYOUT, prepare
from pipelines.conditioning.masks import person_masks, predicted_masks
from pipelines.conditioning.poses import PoseExtractor, PoseTrack, get_extractor, read_pose_track, write_pose_track
from pipelines.conditioning.poses.subject import SubjectHint, SubjectTrack
from pipelines.conditioning.render import render_poses
from pipelines.conditioning.window_inputs import (
    driving_index_map,
    extract_poses,
    prepare_window,
    reference_alignment,
    subject_track,
)
from pipelines.media.timeline import LENGTH_POLICIES

# the version of what conditioning makes of a request (poses, alignment, masks): bump it with any change that alters
# the prepared arrays of an unchanged request, so that window files made before it are never reused
# (pipelines.batch.identity keys on it). 2: the similarity alignment default and per-request subjects.
CONDITIONING_VERSION = 2

__all__ = ["ALIGN_MODES", "CONDITIONING_VERSION", "DEFAULT_ALIGN_MODE", "LAYOUT", "LENGTH_POLICIES", "AlignTransform",
           "PoseExtractor",
           "PoseTrack", "SubjectHint", "SubjectTrack", "aligned_masks", "apply_alignment", "compute_alignment",
           "driving_index_map", "extract_poses", "get_extractor", "identity_alignment", "person_masks",
           "predicted_masks", "prepare", "prepare_window", "read_pose_track", "reference_alignment", "render_poses",
           "subject_track", "write_pose_track"]
