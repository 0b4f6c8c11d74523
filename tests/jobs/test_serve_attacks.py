"""Attacks over real HTTP on 127.0.0.1 against ``mf serve`` started as its own process, the way a user starts it:
its own local Ray, whose Serve proxy gets mf's HTTP limits (:mod:`jobs.serve.http_guard`) from ``connect_ray`` (none
of the tests' variables reach it). Oversized headers, too many headers, slow headers, idle connections past the
connection cap, a stalled body, a chunked body far over the limit and crafted pose tracks are each refused or
closed, and the peak memory of the proxy and of the API replica stays bounded (VmHWM, reset before each attack)."""
from __future__ import annotations

import socket
import threading
import time

import pytest
import requests

from jobs.runtime import PROXY_CALLBACK
from jobs.serve import http_guard
from jobs.serve.http_guard import GuardConfig
from tests.jobs.media_helpers import write_clip
from tests.jobs.net_helpers import mf_serve
from tests.jobs.test_serve import PARAMS, TOKEN_A, _auth
from tests.jobs.test_serve_security import PeakGrowth, RawPost, _part, _pids
from tests.pipelines.conditioning.test_pose_track_limits import _bomb, _escaped_json, _track

MB = 2**20
HEADER_TIMEOUT_S = 3.0
BODY_IDLE_S = 3.0
MAX_CONNECTIONS = 64
ENV = {"MF_SERVE_MAX_UPLOAD_MB": "2", "MF_HTTP_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
       "MF_HTTP_BODY_IDLE_S": str(BODY_IDLE_S), "MF_HTTP_MAX_CONNECTIONS": str(MAX_CONNECTIONS)}
BODY_LIMIT = GuardConfig.from_env(ENV).max_body_bytes  # the API's body limit from the same MF_SERVE_* variables
REPORT: dict[str, str] = {}


def test_guard_settings_from_the_environment():
    assert PROXY_CALLBACK == f"{http_guard.__name__}:{http_guard.proxy_middlewares.__name__}"
    cfg = GuardConfig.from_env(ENV)
    assert (cfg.header_timeout_s, cfg.body_idle_s, cfg.max_connections) == (3.0, 3.0, 64)
    assert 4 * MB < cfg.max_body_bytes < 5 * MB  # two 2 MiB files, the form fields and framing
    assert GuardConfig.from_env({"MF_HTTP_MAX_BODY_BYTES": "1000"}).max_body_bytes == 1000
    with pytest.raises(ValueError):
        GuardConfig.from_env({"MF_HTTP_MAX_HEADERS": "0"})
    with pytest.raises(ValueError):
        GuardConfig.from_env({"MF_HTTP_HEADER_TIMEOUT_S": "soon"})


@pytest.fixture(scope="module")
def served(tmp_path_factory, fixture_cases):
    d = tmp_path_factory.mktemp("attacks")
    source = write_clip(fixture_cases, "s1", d / "media" / "source.mp4", frames=8, side=256)
    with mf_serve(d, TOKEN_A, **ENV) as (proc, base):
        e = dict(proc=proc, base=base, port=int(base.rsplit(":", 1)[1]), dir=d, source=source)
        _warm_up(e)
        yield e
    if REPORT:
        print("\nHTTP guard figures:\n" + "\n".join(f"  {k}: {v}" for k, v in REPORT.items()))


def _warm_up(e) -> None:
    """Valid edits with a Parquet and a JSON pose track: every import of the upload path happens before anything
    is measured."""
    from pipelines.conditioning.poses.keypoints import write_pose_track

    for ext in ("parquet", "json"):
        path = e["dir"] / f"warm.{ext}"
        write_pose_track(_track(8, 8.0), str(path))
        r = _post_driving(e, f"t.{ext}", path.read_bytes())
        assert r.status_code == 202, r.text




def _measure(e, name: str, attack, bound: int):
    """``attack()`` with the peak RSS growth of the proxy and of the API replica of this ``mf serve`` under
    ``bound`` each; records the figures."""
    with PeakGrowth("ProxyActor", _pids("ProxyActor", e["proc"].pid)) as proxy, \
            PeakGrowth("EditAPI", _pids("ServeReplica:mf:EditAPI", e["proc"].pid)) as api:
        result = attack()
    REPORT[name] = f"proxy peak +{proxy.growth / MB:.1f} MiB, API replica peak +{api.growth / MB:.1f} MiB"
    assert proxy.growth < bound and api.growth < bound, REPORT[name]
    return result


def _healthy(e) -> bool:
    return requests.get(e["base"] + "/healthz", timeout=10).status_code == 200


def _send_until_closed(port: int, head: bytes, filler: bytes, total: int) -> tuple[int, bytes]:
    """Send ``head``, then ``filler`` until ``total`` bytes or the server closes; (bytes sent, the answer)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sent = 0
    try:
        sock.sendall(head)
        while sent < total:
            sock.sendall(filler)
            sent += len(filler)
    except OSError:
        pass
    try:
        answer = sock.recv(4096)
    except OSError:
        answer = b""
    sock.close()
    return sent, answer


def test_27_6_a_huge_header_is_refused_while_it_arrives(served):
    name = "6 248 MB header on GET /healthz, no token"
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: "
    sent, answer = _measure(served, name, lambda: _send_until_closed(served["port"], head, b"a" * MB, 248 * MB),
                            bound=16 * MB)
    REPORT[name] += f"; closed after {sent / MB:.0f} MiB sent, answer {answer[:12]!r}"
    assert sent < 64 * MB and answer.startswith(b"HTTP/1.1 400"), REPORT[name]
    assert _healthy(served)


def test_27_6_too_many_headers_answer_431(served):
    headers = {f"X-H{i}": "1" for i in range(150)}
    r = requests.get(served["base"] + "/healthz", headers=headers, timeout=10)
    assert r.status_code == 431 and "headers" in r.json()["detail"]


def test_27_7_a_chunked_body_over_the_limit_is_refused_at_the_limit(served):
    name = "7 700 MB chunked upload, unpaced"
    body = _part("source", b"\x00" * (700 * MB), "source.mp4")

    def attack():
        post = RawPost(served["port"])
        for i in range(0, len(body), MB):
            if not post.send(body[i:i + MB]):
                break
        return post.finish()

    r = _measure(served, name, attack, bound=BODY_LIMIT + 48 * MB)
    REPORT[name] += f"; {r.status} after {r.sent / MB:.1f} MiB sent (limit {BODY_LIMIT / MB:.1f} MiB)"
    assert r.status == 413 and "limit" in r.body, REPORT[name]
    assert r.sent < BODY_LIMIT + 64 * MB, REPORT[name]
    assert _healthy(served)


def _closed_within(socks: list[socket.socket], timeout: float) -> float:
    """Seconds until every socket is closed by the server (AssertionError past ``timeout``)."""
    t0 = time.monotonic()
    for s in socks:
        s.settimeout(max(0.1, timeout - (time.monotonic() - t0)))
        try:
            while s.recv(4096):
                pass
        except TimeoutError:
            raise AssertionError(f"a connection still open after {timeout} s") from None
        except OSError:
            pass
    return time.monotonic() - t0


def test_27_16_slow_headers_are_closed_at_the_deadline(served):
    socks = [socket.create_connection(("127.0.0.1", served["port"])) for _ in range(20)]
    stop = threading.Event()

    def trickle():  # one byte of a never-ending header per connection every 0.5 s
        for s in socks:
            s.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
        while not stop.wait(0.5):
            for s in socks:
                try:
                    s.send(b"a")
                except OSError:
                    pass

    threading.Thread(target=trickle, daemon=True).start()
    try:
        assert _healthy(served)  # the service answers others meanwhile
        took = _closed_within(socks, HEADER_TIMEOUT_S + 10)
    finally:
        stop.set()
    REPORT["16 20 slow-header connections"] = f"all closed {took:.1f} s after the first check " \
                                              f"(deadline {HEADER_TIMEOUT_S:g} s)"


def test_27_16_idle_connections_past_the_cap_get_503_then_close(served):
    name = "16 2,000 idle connections"
    socks = []
    for _ in range(2000):
        try:
            socks.append(socket.create_connection(("127.0.0.1", served["port"]), timeout=5))
        except OSError:
            break
    opened = len(socks)
    over = requests.get(served["base"] + "/healthz", timeout=10)
    took = _closed_within(socks, HEADER_TIMEOUT_S + 20)
    REPORT[name] = f"{opened} opened; a request meanwhile: {over.status_code}; all closed within {took:.1f} s"
    assert over.status_code == 503, REPORT[name]
    assert _healthy(served)


def test_27_16_a_stalled_body_is_closed(served):
    post = RawPost(served["port"], chunked=False, length=MB)
    post.send(b"x" * 10_000)
    t0 = time.monotonic()
    r = post.finish()
    took = time.monotonic() - t0
    REPORT["16 a stalled body"] = f"closed after {took:.1f} s ({r.status or 'no answer'})"
    assert took < BODY_IDLE_S + 10, REPORT["16 a stalled body"]


def test_the_image_gives_every_proxy_the_guard():
    """Clusters on the project image (ray up, KubeRay) start their Serve proxies with the guard, as mf serve does."""
    from tests.jobs.net_helpers import REPO

    text = (REPO / "infra" / "Dockerfile").read_text()
    assert f"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH={PROXY_CALLBACK}" in text


# -- crafted pose tracks (rows 4, 5 and 12 of the issue) -------------------------------------------------------------

def _post_driving(e, name: str, data: bytes) -> requests.Response:
    files = {"source": ("source.mp4", e["source"].read_bytes()), "driving": (name, data)}
    return requests.post(e["base"] + "/v1/edits", headers=_auth(), data=PARAMS, files=files, timeout=120)


def test_27_4_a_pose_track_bomb_is_refused_from_its_footer(served):
    bomb = _bomb(served["dir"] / "bomb.parquet")
    name = "4 2 KB Parquet pose track of two 12.5 M-float rows"
    r = _measure(served, name, lambda: _post_driving(served, "t.parquet", bomb.read_bytes()), bound=16 * MB)
    REPORT[name] += f"; {r.status_code}"
    assert r.status_code == 422 and "the footer claims 25000000 values" in r.text, r.text
    row = served["dir"] / "row.json"  # one frame of 400 k values (1.6 MB, under the 2 MiB upload limit)
    row.write_text('{"width": 64, "height": 64, "fps": 8, "frames": [{"body": [' + "0.0," * 400_000 + "0.0]}]}")
    name = "4 JSON pose track, one 1.6 MB frame"
    r = _measure(served, name, lambda: _post_driving(served, "t.json", row.read_bytes()), bound=16 * MB)
    REPORT[name] += f"; {r.status_code}"
    assert r.status_code == 422 and "frames[0] is longer than 65536 characters" in r.text, r.text


def test_27_5_escaped_keys_are_counted(served):
    track = _escaped_json(served["dir"] / "esc.json", 2000)  # keys spelt "bod\u0079": 2000 frames at 8 fps
    r = _post_driving(served, "t.json", track.read_bytes())
    assert r.status_code == 422 and "driving: 250.0 s exceeds the 120 s limit" in r.text, r.text


def test_27_12_a_pose_track_at_1e300_fps_is_refused_clearly(served):
    from pipelines.conditioning.poses.keypoints import write_pose_track

    path = served["dir"] / "fast.parquet"
    write_pose_track(_track(4, 1e300), str(path))
    r = _post_driving(served, "t.parquet", path.read_bytes())
    assert r.status_code == 422 and "pose track fps must be positive and at most 1000" in r.text, r.text
