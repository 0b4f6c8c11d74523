"""Pose keypoints (OpenPose-18 body + 2x21 hands), extraction backends and temporal tracking."""
from pipelines.conditioning.poses.base import PoseExtractor
from pipelines.conditioning.poses.keypoints import (
                                                    BODY_NAMES,
                                                    HAND_EDGES,
                                                    LIMB_SEQ,
                                                    PoseTrack,
                                                    read_pose_track,
                                                    write_pose_track,
)
from pipelines.conditioning.poses.registry import get_extractor

__all__ = ["BODY_NAMES", "HAND_EDGES", "LIMB_SEQ", "PoseExtractor", "PoseTrack", "get_extractor", "read_pose_track",
           "write_pose_track"]
