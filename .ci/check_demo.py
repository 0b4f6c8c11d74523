"""CI check of what `./dev.sh demo` left: a result manifest with the demo request in the expected status, and an
H.264 video that decodes with the demo's frame count and frame rate. Usage: check_demo.py OUT_DIR STATUS"""
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

FRAMES, FPS = 40, "12/1"  # the demo's defaults (jobs/commands/demo.py)


def main(out: str, status: str) -> int:
    rows = pq.read_table(Path(out) / "results.parquet", use_threads=False).to_pylist()
    assert [r["status"] for r in rows] == [status], rows
    video = rows[0]["output_uri"]
    meta = json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=codec_name,nb_read_frames,r_frame_rate", "-of", "json", video],
        check=True, capture_output=True, text=True).stdout)["streams"][0]
    got = (meta["codec_name"], int(meta["nb_read_frames"]), meta["r_frame_rate"])
    assert got == ("h264", FRAMES, FPS), f"{video}: {got}"
    print(f"CI: demo {status}: {video} is H.264, {FRAMES} frames at {FPS} fps")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
