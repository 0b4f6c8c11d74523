"""Pose keypoints (OpenPose-18 body + 2x21 hands), extraction backends and temporal tracking."""
from pipelines.poses.keypoints import (BODY_NAMES, HAND_EDGES, LIMB_SEQ, PoseTrack, read_pose_track,
                                       write_pose_track)

__all__ = ["BODY_NAMES", "HAND_EDGES", "LIMB_SEQ", "PoseTrack", "read_pose_track", "write_pose_track"]
