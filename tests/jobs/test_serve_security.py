"""The attacks of "Harden the edit endpoint", sent over real HTTP on 127.0.0.1 to a real Serve app (real Ray, real
model, real ffmpeg): each is refused, no error text shows a server path or a namespace, and the API replica's peak
memory stays bounded by the limits (read from /proc: ``VmHWM`` of the replica's process, reset before each attack).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass

import psutil
import pytest
import requests

from jobs.serve import ServeConfig, namespace
from pipelines.conditioning.poses.keypoints import PoseTrack, write_pose_track
from tests.jobs.media_helpers import write_clip
from tests.jobs.net_helpers import free_port, run_app
from tests.jobs.test_serve import PARAMS, TOKEN_A, TOKEN_B, _auth, _wait

MB = 2**20
LIMIT = 2 * MB  # the upload limit of this server
CFG = dict(max_upload_bytes=LIMIT, max_seconds=30, max_side=1024, max_frames=600, max_steps=1000, max_size=2048,
           max_cost=1000, queue_size=4, max_queued_per_token=2, max_uploads=8, max_uploads_per_token=4,
           body_idle_s=4.0, body_timeout_s=30.0, cpus_per_replica=1)
RSS_SLACK = 48 * MB  # interpreter noise, and what Ray Serve forwards before the 413 closes the connection
# Ray Serve's proxy reads a body as fast as the client sends it, whatever the app reads: what it holds is bounded by
# the time from the limit to the closed connection, not by the size of the body.
PROXY_BOUND = 3 * LIMIT + 64 * MB
REPORT: dict[str, str] = {}


@pytest.fixture(scope="module")
def env(fixture_cases, tmp_path_factory, ray_local):
    """The media (an allowed folder, a file outside it) and a running Serve app; yields its paths."""
    from ray import serve

    d = tmp_path_factory.mktemp("sec")
    allowed, outside = d / "allowed", d / "outside"
    allowed.mkdir(), outside.mkdir()
    src = write_clip(fixture_cases, "s1", allowed / "source.mp4", frames=8, side=256)
    drv = write_clip(fixture_cases, "m1", allowed / "driving.mp4", frames=8, side=256)
    shutil.copy(src, allowed / "-x.mp4")
    shutil.copy(src, outside / "secret.mp4")
    os.symlink(outside / "secret.mp4", allowed / "link.mp4")
    root = d / "root"
    cfg = ServeConfig(root=str(root), tokens=(TOKEN_A, TOKEN_B), allowed_prefixes=(str(allowed),), **CFG)
    port = free_port()
    base = run_app(cfg, port, attempts=150)
    e = dict(base=base, port=port, dir=d, allowed=allowed, source=src, driving=drv, root=root)
    r = _post(e)  # warm-up: every import of the upload path happens before anything is measured
    assert r.status_code == 202, r.text
    assert _wait(base, r.json()["id"])["state"] == "succeeded"
    yield e
    serve.shutdown()
    if REPORT:
        print("\n" + "\n".join(f"serve security: {k}: {v}" for k, v in REPORT.items()))


def _secrets(e) -> list[str]:
    return [str(e["dir"]), str(e["root"]), "/tmp", namespace(TOKEN_A), namespace(TOKEN_B), "/work", "/home"]


def _clean(e, text: str) -> str:
    for s in _secrets(e):
        assert s not in text, f"{s!r} leaks in {text!r}"
    return text


def _post(e, token=TOKEN_A, files=None, data=None, **extra):
    files = files or {"source": ("source.mp4", e["source"].read_bytes()),
                      "driving": ("driving.mp4", e["driving"].read_bytes())}
    return requests.post(e["base"] + "/v1/edits", headers=_auth(token), data={**PARAMS, **(data or {}), **extra},
                         files=files, timeout=120)


# -- raw HTTP (streamed, stalled and chunked bodies) ----------------------------------------------------------------

@dataclass
class Raw:
    status: int
    body: str
    sent: int


class RawPost:
    """A POST written by hand: headers, then body chunks as the test likes; the response is read concurrently, so
    a server that answers and closes early is seen as it happens."""

    def __init__(self, port: int, token: str = TOKEN_A, chunked: bool = True, length: int | None = None,
                 boundary: str = "XyZ"):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.chunked, self.sent, self.resp = chunked, 0, bytearray()
        self.done = threading.Event()
        head = ["POST /v1/edits HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {token}",
                f"Content-Type: multipart/form-data; boundary={boundary}"]
        head.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}")
        self.sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while not self.done.is_set():
            try:
                data = self.sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            self.resp.extend(data)
            head, sep, body = bytes(self.resp).partition(b"\r\n\r\n")
            lengths = [int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")]
            if sep and lengths and len(body) >= lengths[0]:
                break
        self.done.set()

    def send(self, chunk: bytes) -> bool:
        """False once the server has answered or closed (nothing more is sent)."""
        if self.done.is_set():
            return False
        try:
            self.sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" if self.chunked else chunk)
        except OSError:
            return False
        self.sent += len(chunk)
        return True

    def finish(self, timeout: float = 60, end: bool = True) -> Raw:
        """The response; ``end``: send the end of a chunked body first (else just wait for the server)."""
        if end and self.chunked and not self.done.is_set():
            try:
                self.sock.sendall(b"0\r\n\r\n")
            except OSError:
                pass
        self.done.wait(timeout)
        self.sock.close()
        head, _, body = bytes(self.resp).partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1]) if head.startswith(b"HTTP/") else 0
        return Raw(status, body.decode("latin-1"), self.sent)


def _part(name: str, data: bytes, filename: str | None = None, boundary: str = "XyZ") -> bytes:
    disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + data + b"\r\n"


# -- memory of the replicas ------------------------------------------------------------------------------------------

def _pids(marker: str, root: int | None = None) -> list[int]:
    """Processes under ``root`` (default: this process, whose Ray the tests started) whose command line (Ray's
    process title) names ``marker``, e.g. the EditAPI replica's actor; other Ray clusters on the host are not
    looked at."""
    out = []
    for p in psutil.Process(root or os.getpid()).children(recursive=True):
        try:
            if any(marker in part for part in p.cmdline()):
                out.append(p.pid)
        except psutil.Error:  # gone meanwhile
            continue
    return out


def _status_kb(pid: int, key: str) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _settle(pids: list[int], busy_percent: float = 10.0, host_percent: float = 50.0, timeout_s: float = 5.0) -> None:
    """Wait (at most ``timeout_s``) until the processes are idle and the host is mostly idle, so an attack's figures
    are not inflated by the previous attack's tail (a replica still freeing, a proxy still draining a refused body)
    or by work earlier tests left running: how much Ray Serve reads ahead before a 413 depends on the host's load."""
    procs = [psutil.Process(pid) for pid in pids]
    deadline = time.monotonic() + timeout_s
    calm = 0
    while calm < 2 and time.monotonic() < deadline:
        psutil.cpu_percent(None)  # opens the host-wide window the line below closes
        busy = max(p.cpu_percent(interval=0.1) for p in procs)
        calm = calm + 1 if busy < busy_percent and psutil.cpu_percent(None) < host_percent else 0


class PeakGrowth:
    """Peak RSS growth of the processes named by ``marker`` (or of ``pids``) while the block runs (VmHWM reset by
    clear_refs)."""

    def __init__(self, marker: str, pids: list[int] | None = None):
        self.pids = _pids(marker) if pids is None else pids
        assert self.pids, f"no process {marker}"

    def __enter__(self):
        _settle(self.pids)
        self.base = {}
        for pid in self.pids:
            with open(f"/proc/{pid}/clear_refs", "w") as fh:
                fh.write("5")
            self.base[pid] = _status_kb(pid, "VmRSS")
        return self

    def __exit__(self, *exc):
        self.growth = max(_status_kb(pid, "VmHWM") - base for pid, base in self.base.items())


def _measure(name: str, attack, bound: int = 3 * LIMIT + RSS_SLACK, proxy_bound: int = 0):
    """Run ``attack()`` and assert the API replica's peak growth stays under ``bound`` (the proxy's under
    ``proxy_bound``, default :data:`PROXY_BOUND`); records the figures."""
    with PeakGrowth("ServeReplica:mf:EditAPI") as api, PeakGrowth("ProxyActor") as proxy:
        result = attack()
    REPORT[name] = f"API replica peak +{api.growth / MB:.1f} MiB, proxy peak +{proxy.growth / MB:.1f} MiB"
    assert api.growth < bound, REPORT[name]
    assert proxy.growth < (proxy_bound or PROXY_BOUND), REPORT[name]
    return result


# -- 1, 2: bodies over the limits --------------------------------------------------------------------------------

def _stream(e, parts, chunk: int = 64 * 1024, rate: float | None = None, **kw) -> Raw:
    """Send ``parts`` as one body (chunked unless ``chunked=False, length=N``), at most ``rate`` bytes/s."""
    post, t0 = RawPost(e["port"], **kw), time.perf_counter()
    for data in parts:
        for i in range(0, len(data), chunk):
            if not post.send(data[i:i + chunk]):
                return post.finish()
            if rate:
                time.sleep(max(0.0, t0 + post.sent / rate - time.perf_counter()))
    return post.finish()


PACED = 200 * MB  # bytes/s: faster than most clients' links, slow enough for a bound that holds on a loaded host


def test_1_chunked_upload_refused_at_the_limit(env):
    body = [_part("source", b"\x00" * (80 * MB), "source.mp4")]
    for i in range(1, 3):  # the first from a replica that has not seen a big body yet
        name = f"1 80 MB chunked upload at 200 MB/s #{i}"
        r = _measure(name, lambda: _stream(env, body, chunk=MB, rate=PACED))
        assert r.status == 413 and "limit" in _clean(env, r.body), r
        REPORT[name] += f"; 413 after {r.sent / MB:.1f} MiB sent"
        assert r.sent < 40 * MB, REPORT[name]
    name = "1 80 MB sized upload"
    r = _measure(name, lambda: _stream(env, body, chunk=MB, rate=PACED, chunked=False, length=len(body[0])))
    assert r.status == 413 and "limit" in _clean(env, r.body), r
    REPORT[name] += f"; 413 after {r.sent / MB:.1f} MiB sent"


def test_1_unpaced_upload_is_not_read_to_the_end(env):
    """At loopback speed what Ray Serve reads ahead before the 413 closes the connection depends on the host's load
    (see jobs/serve/limits.py): it is reported, and must stay far below the body."""
    body = [_part("source", b"\x00" * (320 * MB), "source.mp4")]
    name = "1 320 MB chunked upload, unpaced"
    r = _measure(name, lambda: _stream(env, body), bound=160 * MB, proxy_bound=160 * MB)
    assert r.status == 413, r
    REPORT[name] += f"; 413 after {r.sent / MB:.1f} MiB sent"
    assert r.sent < 160 * MB, REPORT[name]


def test_2_large_and_many_fields_refused(env):
    fields = [_part(f"f{i}", b"x" * (3 * MB // 2)) for i in range(40)]
    r = _measure("2 40 fields x 1.5 MB at 200 MB/s", lambda: _stream(env, fields, chunk=MB, rate=PACED))
    assert r.status == 413, r
    one_big = _stream(env, [_part("steps", b"1" * (100 * 1024)), b"--XyZ--\r\n"])
    assert one_big.status == 413 and "maximum size" in _clean(env, one_big.body), one_big
    many = _stream(env, [_part(f"f{i}", b"1") for i in range(40)] + [b"--XyZ--\r\n"])
    assert many.status == 413 and "fields" in _clean(env, many.body), many
    three = {k: (f"{k}.mp4", b"\x00") for k in ("source", "driving", "extra")}
    r3 = _post(env, files=three)
    assert r3.status_code == 413 and "files" in _clean(env, r3.text), r3.text


# -- 3, 4: inputs whose decoding would be expensive ---------------------------------------------------------------

def test_3_huge_resolution_refused_without_decoding(env):
    big = env["dir"] / "big.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=gray:s=8192x8192:r=8", "-frames:v",
                    "1", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(big)], check=True)
    files = {"source": ("s.mp4", big.read_bytes()), "driving": ("d.mp4", env["driving"].read_bytes())}
    r = _measure("3 8192x8192 H.264", lambda: _post(env, files=files))
    assert r.status_code == 422 and "source: 8192x8192 exceeds the 1024 px limit" in _clean(env, r.text), r.text


def test_4_long_pose_track_refused_from_its_header(env):
    track = PoseTrack.empty(150_000, fps=0.0)
    for fps, name in ((0.0, "fps0.parquet"), (30.0, "fps30.parquet")):
        track.fps = fps
        write_pose_track(track, str(env["dir"] / name))
    files0 = {"source": ("s.mp4", env["source"].read_bytes()), "driving": ("t.parquet",
                                                                          (env["dir"] / "fps0.parquet").read_bytes())}
    r = _measure("4 150k-frame pose track, fps 0", lambda: _post(env, files=files0))
    assert r.status_code == 422 and "driving: pose track fps must be positive" in _clean(env, r.text), r.text
    files30 = {**files0, "driving": ("t.parquet", (env["dir"] / "fps30.parquet").read_bytes())}
    r = _post(env, files=files30)
    assert r.status_code == 422 and "driving: 5000.0 s exceeds the 30 s limit" in _clean(env, r.text), r.text


# -- 5, 6: queue slots, cost cap, cancellation ------------------------------------------------------------------

def test_5_half_sent_uploads_hold_no_queue_slot(env):
    stalled = [RawPost(env["port"]) for _ in range(4)]
    for s in stalled:
        assert s.send(_part("steps", b"1") + b"--XyZ\r\nContent-Disposition: form-data")
    time.sleep(0.3)
    fifth = _post(env)  # the stalling token may not open more uploads
    assert fifth.status_code == 429 and "max_uploads_per_token" in _clean(env, fifth.text), fifth.text
    assert requests.get(env["base"] + "/healthz", timeout=10).json()["queue"] == 0
    r = _post(env, token=TOKEN_B)  # another token is served as usual
    assert r.status_code == 202, r.text
    t0 = time.perf_counter()
    results = [s.finish(timeout=30, end=False) for s in stalled]
    assert [x.status for x in results] == [408] * 4, results  # the idle timeout (4 s) ends them
    assert time.perf_counter() - t0 < 15
    assert _wait(env["base"], r.json()["id"], token=TOKEN_B)["state"] == "succeeded"


def _long_edit(e, token=TOKEN_A, steps=500):
    return _post(e, token=token, steps=str(steps), window="8", size="64")


def test_5_per_token_queue_cap(env):
    ids = []
    for _ in range(2):
        r = _long_edit(env)
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    third = _long_edit(env)
    assert third.status_code == 429 and "max_queued_per_token" in _clean(env, third.text), third.text
    other = _post(env, token=TOKEN_B)
    assert other.status_code == 202, other.text
    for i in ids:
        assert requests.delete(f"{env['base']}/v1/edits/{i}", headers=_auth(), timeout=30).status_code == 204
    assert _wait(env["base"], other.json()["id"], token=TOKEN_B)["state"] == "succeeded"


def test_6_cost_cap_names_the_cap(env):
    r = _post(env, steps="1000", size="2048", window="32")
    assert r.status_code == 422 and "max_cost" in _clean(env, r.text), r.text


def test_6_delete_stops_the_running_edit(env):
    r = _long_edit(env)
    assert r.status_code == 202, r.text
    edit_id = r.json()["id"]
    edit_dir = env["root"] / "edits" / namespace(TOKEN_A) / edit_id
    deadline = time.time() + 60
    while requests.get(f"{env['base']}/v1/edits/{edit_id}", headers=_auth(), timeout=10).json()["state"] != "running":
        assert time.time() < deadline
        time.sleep(0.1)
    nxt = _post(env)  # queued behind it in the worker
    assert nxt.status_code == 202, nxt.text
    time.sleep(2.0)  # mid-window: 500 steps of one 8-frame window take about 100 s here
    assert requests.delete(f"{env['base']}/v1/edits/{edit_id}", headers=_auth(), timeout=30).status_code == 204
    deleted_at = time.time()
    assert not edit_dir.exists()
    st = _wait(env["base"], nxt.json()["id"])
    latency = st["started_at"] - deleted_at
    REPORT["6 cancel-to-idle"] = f"{latency:.2f} s from DELETE 204 to the worker starting the next edit"
    assert st["state"] == "succeeded" and latency < 10, REPORT["6 cancel-to-idle"]
    time.sleep(1.0)
    assert not edit_dir.exists(), sorted(p.name for p in edit_dir.rglob("*"))
    assert (env["root"] / "tombstones" / namespace(TOKEN_A) / edit_id).exists()
    for route in ("", "/video"):
        assert requests.get(f"{env['base']}/v1/edits/{edit_id}{route}", headers=_auth(), timeout=10).status_code == 404


# -- 7, 8, 9, 11, 13: what the inputs name ------------------------------------------------------------------------

def _refused(e, files) -> str:
    """The reason of a 422 at submission (an unusable input never becomes an edit)."""
    r = _post(e, files=files)
    assert r.status_code == 422, r.text
    return _clean(e, r.json()["detail"])


def test_7_playlist_upload_follows_nothing(env):
    errors = []
    for target in (env["allowed"] / "source.mp4", env["dir"] / "missing.mp4"):
        # one binary byte early on, so it does not pass for a text file: the container check must refuse it
        playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n\x01\n#EXTINF:1.0,\nfile://{target}\n#EXT-X-ENDLIST\n"
        files = {"source": ("s.mp4", playlist.encode()), "driving": ("d.mp4", env["driving"].read_bytes())}
        errors.append(_refused(env, files))
    assert errors[0] == errors[1] and errors[0].startswith("source: not a readable video"), errors
    files = {"source": ("s.m3u8", b"#EXTM3U\n"), "driving": ("d.mp4", env["driving"].read_bytes())}
    r = _post(env, files=files)
    assert r.status_code == 422 and "not accepted" in _clean(env, r.text), r.text


def _by_uri(e, source_uri: str):
    return requests.post(e["base"] + "/v1/edits", headers=_auth(), timeout=60,
                         data={**PARAMS, "source_uri": source_uri, "driving_uri": str(e["driving"])})


def test_8_option_like_paths(env):
    for uri in ("-i", "-version", "-f lavfi -i testsrc"):
        r = _by_uri(env, uri)
        assert r.status_code == 403, r.text
        _clean(env, r.text)
    r = _by_uri(env, str(env["allowed"] / "-x.mp4"))  # a file whose name starts with '-' is read as a file
    assert r.status_code == 202, r.text
    assert _wait(env["base"], r.json()["id"])["state"] == "succeeded"


def test_9_edit_ids_and_upload_names(env):
    good = _post(env).json()["id"]
    for bad in (f"{good}::x", f"{good}::memory", "short", "a" * 65, "..", "a.b.c.d.e.f.g.h.i.j"):
        for method, route in (("get", ""), ("get", "/video"), ("delete", "")):
            r = requests.request(method, f"{env['base']}/v1/edits/{bad}{route}", headers=_auth(), timeout=10)
            assert r.status_code == 404, (bad, route, r.status_code, r.text)
    files = {"source": ("a.::memory", env["source"].read_bytes()), "driving": ("d.mp4", env["driving"].read_bytes())}
    r = _post(env, files=files)
    assert r.status_code == 422 and "not accepted" in r.text, r.text
    files = {"source": ("../../evil.MP4", env["source"].read_bytes()),
             "driving": ("..\\x.Mp4", env["driving"].read_bytes())}
    r = _post(env, files=files)
    assert r.status_code == 202, r.text
    inputs = env["root"] / "edits" / namespace(TOKEN_A) / r.json()["id"] / "inputs"
    assert sorted(p.name for p in inputs.iterdir()) == ["driving.mp4", "source.mp4"]
    assert _wait(env["base"], r.json()["id"])["state"] == "succeeded"
    _wait(env["base"], good)


def test_10_errors_name_no_server_path_and_failed_uploads_go(env):
    corrupt = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40
    before = set((env["root"] / "edits" / namespace(TOKEN_A)).iterdir())
    assert _refused(env, {"source": ("c.mp4", corrupt), "driving": ("d.mp4", env["driving"].read_bytes())}) \
        .startswith("source: ")
    assert set((env["root"] / "edits" / namespace(TOKEN_A)).iterdir()) == before  # its uploads are gone
    r = _by_uri(env, str(env["dir"] / "outside" / "secret.mp4"))
    assert r.status_code == 403 and _clean(env, r.text)


def test_11_symlink_out_of_the_prefix_refused(env):
    r = _by_uri(env, str(env["allowed"] / "link.mp4"))
    assert r.status_code == 403 and "outside the allowed" in _clean(env, r.text), r.text
    r = _by_uri(env, "file://" + str(env["allowed"] / "link.mp4"))
    assert r.status_code == 403, r.text


def test_13_variable_frame_rate_resampled(env):
    vfr = env["dir"] / "vfr.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=s=128x128:r=25:d=2", "-vf",
                    "settb=1/1000,setpts='(N*0.04+mod(N,2)*0.03)/TB'", "-fps_mode", "passthrough", "-c:v",
                    "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(vfr)], check=True)
    r = _post(env, files={"source": ("v.mp4", vfr.read_bytes()), "driving": ("d.mp4", env["driving"].read_bytes())})
    assert r.status_code == 202, r.text  # accepted: resampled, not refused (the test pattern holds no person)
    _wait(env["base"], r.json()["id"])


# -- media that lies or weighs: the stream checked is the stream decoded, packets are counted -----------------------

def _ff(*args) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *map(str, args)], check=True)


def test_27_2_a_second_video_stream_is_neither_checked_nor_decoded(env):
    big = env["dir"] / "big_stream.mp4"
    _ff("-f", "lavfi", "-i", "color=c=gray:s=2048x2048:r=8:d=12", "-c:v", "libx264", "-preset", "ultrafast", big)
    two = env["dir"] / "two.mkv"  # the person first (the default stream), a 2048² 96-frame stream second
    _ff("-i", env["source"], "-i", big, "-map", "0:v", "-map", "1:v", "-c", "copy", "-disposition:v:0", "default",
        "-disposition:v:1", "0", two)
    files = {"source": ("s.mkv", two.read_bytes()), "driving": ("d.mp4", env["driving"].read_bytes())}
    r = _measure("27-2 second video stream 2048x2048", lambda: _post(env, files=files))
    assert r.status_code == 202, r.text
    assert _wait(env["base"], r.json()["id"])["state"] == "succeeded"
    swapped = env["dir"] / "swapped.mkv"  # the big stream marked default: that is the one checked, and refused
    _ff("-i", two, "-map", "0:v:1", "-map", "0:v:0", "-c", "copy", "-disposition:v:0", "default",
        "-disposition:v:1", "0", swapped)
    r = _post(env, files={**files, "source": ("s.mkv", swapped.read_bytes())})
    assert r.status_code == 422 and "2048x2048 exceeds the 1024 px limit" in _clean(env, r.text), r.text


def _patch_avi_frame_count(path, frames: int) -> None:
    """Write ``frames`` into an AVI's main header (dwTotalFrames) and its video stream header (dwLength)."""
    data = bytearray(path.read_bytes())
    avih, strh = data.index(b"avih"), data.index(b"strh")
    data[avih + 24:avih + 28] = frames.to_bytes(4, "little")
    data[strh + 40:strh + 44] = frames.to_bytes(4, "little")
    path.write_bytes(bytes(data))


def test_27_3_a_header_that_lies_about_the_length_is_not_believed(env):
    long = env["dir"] / "long.avi"  # 800 frames (the limit is 600), the header patched to say 8
    _ff("-f", "lavfi", "-i", "testsrc=s=64x64:r=25:d=32", "-c:v", "mpeg4", "-q:v", "20", long)
    _patch_avi_frame_count(long, 8)
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=nb_frames",
                            "-of", "csv=p=0", str(long)], capture_output=True, text=True).stdout.strip()
    assert probe == "8", probe  # what a header reader believes
    files = {"source": ("s.avi", long.read_bytes()), "driving": ("d.mp4", env["driving"].read_bytes())}
    r = _measure("27-3 AVI claiming 8 of its 800 frames", lambda: _post(env, files=files), bound=16 * MB)
    assert r.status_code == 422 and "more than 600 frames" in _clean(env, r.text), r.text


def test_27_8_a_file_of_500_streams_is_refused_before_they_are_probed(env):
    one, many = env["dir"] / "one.mkv", env["dir"] / "many.mkv"
    _ff("-f", "lavfi", "-i", "testsrc=s=64x48:r=8:d=1", "-c:v", "libx264", one)
    _ff("-i", one, *[a for _ in range(500) for a in ("-map", "0:v")], "-c", "copy", many)
    files = {"source": ("s.mkv", many.read_bytes()), "driving": ("d.mp4", env["driving"].read_bytes())}
    r = _measure("27-8 MKV of 500 streams", lambda: _post(env, files=files), bound=24 * MB)
    assert r.status_code == 422 and "32 or more streams" in _clean(env, r.text), r.text


@pytest.mark.parametrize("size, reason", [("1x1", "too small"), ("2x2", "too small"), ("1024x2", "too small"),
                                          ("1024x32", "too narrow")])
def test_27_12_degenerate_sizes_are_refused_clearly(env, size, reason):
    path = env["dir"] / f"tiny_{size}.mkv"
    w, h = map(int, size.split("x"))
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "gray", "-s", size, "-r", "8", "-i",
                    "-", "-c:v", "png", str(path)], input=bytes([128]) * (w * h * 8), check=True)
    r = _post(env, files={"source": ("s.mkv", path.read_bytes()), "driving": ("d.mp4", env["driving"].read_bytes())})
    assert r.status_code == 422 and f"{size} is {reason}" in _clean(env, r.text), r.text
