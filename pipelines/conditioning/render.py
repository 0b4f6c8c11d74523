"""Render pose tracks exactly like the official MotionFollower sample pose images.

Style (from the official samples): black background; OpenPose-18 body limbs as filled ellipses of half-width 4 px at
60 % of the palette colour; joint discs of radius 4 px at full palette colour; both hands with 2 px bones coloured
along the HSV hue circle and key points as discs of radius 4; no face. The sample images were written in BGR order,
so red and blue are exchanged relative to the ControlNet palette: we draw in the ControlNet convention and swap the
channels at the end.
"""
from __future__ import annotations

import colorsys
import math

import numpy as np

from pipelines.conditioning.poses.keypoints import HAND_EDGES, LIMB_SEQ, PoseTrack

# ControlNet/OpenPose body palette (RGB), one colour per joint and per limb.
BODY_COLORS = [(255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
               (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
               (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85)]
HAND_EDGE_COLORS = [tuple(float(c) * 255 for c in colorsys.hsv_to_rgb(i / len(HAND_EDGES), 1.0, 1.0))
                    for i in range(len(HAND_EDGES))]
HAND_POINT_COLOR = (0, 0, 255)
STICK_WIDTH = 4
JOINT_RADIUS = 4
HAND_LINE_WIDTH = 2
HAND_POINT_RADIUS = 4
LIMB_INTENSITY = 0.6
SCORE_THRESHOLD = 0.3
# joints whose disc colour equals the hand key-point colour (left knee): decoded only next to their own limb
SHARED_COLOUR_JOINTS = (12,)


def official_joint_colors() -> np.ndarray:
    """Body joint disc colours as they appear in the official PNGs (R and B exchanged): (18, 3) uint8."""
    return np.array(BODY_COLORS, np.uint8)[:, ::-1].copy()


def _draw_body(canvas: np.ndarray, body: np.ndarray, thr: float) -> np.ndarray:
    import cv2

    vis = body[:, 2] > thr
    for i, (a, b) in enumerate(LIMB_SEQ[:17]):
        if not (vis[a] and vis[b]):
            continue
        xs, ys = body[[a, b], 0], body[[a, b], 1]
        mx, my = float(np.mean(xs)), float(np.mean(ys))
        length = math.hypot(xs[0] - xs[1], ys[0] - ys[1])
        angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
        poly = cv2.ellipse2Poly((int(mx), int(my)), (int(length / 2), STICK_WIDTH), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, poly, BODY_COLORS[i])
    canvas = (canvas * LIMB_INTENSITY).astype(np.uint8)
    for j in range(18):
        if vis[j]:
            cv2.circle(canvas, (int(body[j, 0]), int(body[j, 1])), JOINT_RADIUS, BODY_COLORS[j], thickness=-1)
    return canvas


def _draw_hands(canvas: np.ndarray, hands: np.ndarray, thr: float) -> None:
    import cv2

    eps = 0.01
    for hand in hands:
        vis = (hand[:, 2] > thr) & (hand[:, 0] > eps) & (hand[:, 1] > eps)
        pts = hand[:, :2].astype(np.int64)
        for e, (a, b) in enumerate(HAND_EDGES):
            if vis[a] and vis[b]:
                cv2.line(canvas, (int(pts[a, 0]), int(pts[a, 1])), (int(pts[b, 0]), int(pts[b, 1])),
                         HAND_EDGE_COLORS[e], thickness=HAND_LINE_WIDTH)
        for k in range(21):
            if vis[k]:
                cv2.circle(canvas, (int(pts[k, 0]), int(pts[k, 1])), HAND_POINT_RADIUS, HAND_POINT_COLOR,
                           thickness=-1)


def render_pose(body: np.ndarray, hands: np.ndarray | None, size=(512, 512), thr: float = SCORE_THRESHOLD,
                draw_hands: bool = True) -> np.ndarray:
    """One frame: ``body`` (18, 3), ``hands`` (2, 21, 3) in pixels → (H, W, 3) uint8 in the official colours."""
    h, w = (size, size) if isinstance(size, int) else size
    canvas = np.zeros((h, w, 3), np.uint8)
    canvas = _draw_body(canvas, np.asarray(body, np.float32), thr)
    if draw_hands and hands is not None:
        _draw_hands(canvas, np.asarray(hands, np.float32), thr)
    return np.ascontiguousarray(canvas[:, :, ::-1])


def render_poses(track: PoseTrack, size=None, thr: float = SCORE_THRESHOLD, draw_hands: bool = True) -> np.ndarray:
    """Render every frame of ``track``: (N, H, W, 3) uint8. ``size`` defaults to the track's frame size."""
    if size is not None:
        size = (size, size) if isinstance(size, int) else tuple(size)
        if size != track.size:
            track = track.rescaled(size)
    size = track.size
    out = np.zeros((len(track), size[0], size[1], 3), np.uint8)
    for i in range(len(track)):
        out[i] = render_pose(track.body[i], track.hands[i], size, thr, draw_hands)
    return out


def decode_pose_image(img: np.ndarray, min_area: int = 12) -> np.ndarray:
    """Recover body keypoints from an official-style pose image (H, W, 3) by finding the joint discs by colour.

    Returns (18, 3) [x, y, score] with score 1 for a found disc and 0 otherwise. Disc centres are the centroids of
    the exact-colour pixels (discs are drawn last, so mostly unoccluded). Joint 12 (left knee) shares its colour
    with the hand key points: only a blob touching a drawn leg limb is taken (a knee whose hip is not drawn is
    not decoded), the most disc-shaped one.
    """
    import cv2

    colors = official_joint_colors()
    out = np.zeros((18, 3), np.float32)
    limb_cols: list[list[np.ndarray]] = [[] for _ in range(18)]
    for i, (a, b) in enumerate(LIMB_SEQ[:17]):
        c = (np.array(BODY_COLORS[i], np.float64) * LIMB_INTENSITY).astype(np.uint8)[::-1]
        limb_cols[a].append(c)
        limb_cols[b].append(c)
    for j in range(18):
        m = np.all(img == colors[j], axis=-1).astype(np.uint8)
        if m.sum() < min_area:
            continue
        n, lab, stats, cents = cv2.connectedComponentsWithStats(m, connectivity=8)
        best, best_cost = -1, 1e9
        for k in range(1, n):
            area = stats[k, cv2.CC_STAT_AREA]
            bw, bh = stats[k, cv2.CC_STAT_WIDTH], stats[k, cv2.CC_STAT_HEIGHT]
            if area < min_area or bw > 13 or bh > 13:
                continue
            cost = abs(area - 49) + 3 * abs(bw - bh)
            if limb_cols[j]:
                y0, x0 = stats[k, cv2.CC_STAT_TOP], stats[k, cv2.CC_STAT_LEFT]
                win = img[max(0, y0 - 3):y0 + bh + 3, max(0, x0 - 3):x0 + bw + 3].reshape(-1, 3)
                if not any(np.all(win == c, axis=-1).any() for c in limb_cols[j]):
                    if j in SHARED_COLOUR_JOINTS:
                        continue  # a hand key point, not this joint: its disc always ends a drawn leg limb
                    cost += 100  # a disc always sits at the end of a drawn limb when that limb is visible
            if cost < best_cost:
                best, best_cost = k, cost
        if best > 0:
            ys, xs = np.nonzero(lab == best)
            # bbox centre is robust to partial occlusion on one side; centroid otherwise
            x0, y0 = stats[best, cv2.CC_STAT_LEFT], stats[best, cv2.CC_STAT_TOP]
            bw, bh = stats[best, cv2.CC_STAT_WIDTH], stats[best, cv2.CC_STAT_HEIGHT]
            cx = x0 + (bw - 1) / 2 if bw == 9 else float(xs.mean())
            cy = y0 + (bh - 1) / 2 if bh == 9 else float(ys.mean())
            out[j] = (cx, cy, 1.0)
    return out
