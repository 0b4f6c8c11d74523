"""Windows: planning a video as overlapping windows of at most 32 frames, their deterministic ids, and stitching
edited windows back in frame order (crossfade, seam metric) in O(window) memory."""
