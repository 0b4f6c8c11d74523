"""The Ray Serve edit endpoint over real HTTP on 127.0.0.1 (real Ray, real model, real ffmpeg), and its parts that
need no server (the body guard, the caps, error texts, expiry). The attacks: test_serve_security.py."""
from __future__ import annotations

import asyncio
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from fastapi import HTTPException
from starlette.datastructures import FormData

from jobs.serve import ServeConfig, app_builder, build_app
from jobs.serve.inputs import check_cost, parse_edit, scrub
from jobs.serve.limits import BodyGuard, BodyLimits
from jobs.serve.store import StateStore
from jobs.serve.sweep import Sweeper
from pipelines.media.encode import probe_output
from tests.jobs.media_helpers import TINY_EDIT, write_clip
from tests.jobs.net_helpers import free_port, run_app

TOKEN_A, TOKEN_B = "token-a-" + "x" * 24, "token-b-" + "y" * 24
PARAMS = {**{k: str(v) for k, v in TINY_EDIT.items()}, "steps": "1"}



@pytest.fixture(scope="module")
def media(fixture_cases, tmp_path_factory):
    d = tmp_path_factory.mktemp("serve_media")
    src = write_clip(fixture_cases, "s1", d / "source.mp4", frames=8, side=256)
    drv = write_clip(fixture_cases, "m1", d / "driving.mp4", frames=8, side=256)
    corrupt = d / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    return {"source": src, "driving": drv, "corrupt": corrupt, "dir": d}


@pytest.fixture(scope="module")
def server(ray_local, tmp_path_factory, media):
    from ray import serve

    root = tmp_path_factory.mktemp("serve_root")
    cfg = ServeConfig(root=str(root), tokens=(TOKEN_A, TOKEN_B), allowed_prefixes=(str(media["dir"]),),
                      max_upload_bytes=400_000, max_seconds=30, max_side=1024, queue_size=4, cpus_per_replica=1)
    port = free_port()
    base = run_app(cfg, port, attempts=100)
    yield base
    serve.shutdown()


def _auth(token=TOKEN_A):
    return {"Authorization": f"Bearer {token}"}


def _post(base, media, token=TOKEN_A, source="source", **extra):
    with open(media[source], "rb") as s, open(media["driving"], "rb") as d:
        return requests.post(base + "/v1/edits", headers=_auth(token), data={**PARAMS, **extra},
                             files={"source": ("source.mp4", s, "video/mp4"),
                                    "driving": ("driving.mp4", d, "video/mp4")}, timeout=120)


def _wait(base, edit_id, token=TOKEN_A, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = requests.get(f"{base}/v1/edits/{edit_id}", headers=_auth(token), timeout=30).json()
        if st["state"] in ("succeeded", "failed", "cancelled"):
            return st
        time.sleep(0.5)
    raise AssertionError(f"edit {edit_id} did not finish: {st}")


def test_config_from_env_and_builder_args(monkeypatch):
    env = {"MF_SERVE_TOKENS": "a, b,", "MF_SERVE_MAX_UPLOAD_MB": "1.5", "MF_SERVE_QUEUE": "3", "MF_SERVE_WEIGHTS": "",
           "MF_SERVE_DEFAULTS": '{"steps": 5}', "MF_SERVE_ALLOWED_PREFIXES": "s3://b/x/"}
    cfg = ServeConfig.from_env(env, queue_size=2, allowed_prefixes="s3://b/x/, s3://b/y/")
    assert cfg.tokens == ("a", "b") and cfg.max_upload_bytes == int(1.5 * 2**20) and cfg.weights is None
    assert cfg.queue_size == 2 and cfg.allowed_prefixes == ("s3://b/x/", "s3://b/y/") and cfg.defaults == {"steps": 5}
    assert ServeConfig.from_env({"MF_SERVE_TOKEN": "c"}).tokens == ("c",)
    assert ServeConfig.from_env({}) == ServeConfig()
    with pytest.raises(ValueError, match="queue"):
        ServeConfig.from_env({}, queue=3)  # not a field
    with pytest.raises(ValueError, match="max_side"):
        ServeConfig.from_env({"MF_SERVE_MAX_SIDE": "big"})
    with pytest.raises(ValueError, match="MF_SERVE_TOKENS"):
        build_app(ServeConfig())
    from ray import serve

    monkeypatch.setenv("MF_SERVE_TOKENS", "t")  # the RayService path: args over the environment
    assert isinstance(app_builder({"replicas": 2, "gpus_per_replica": 0}), serve.Application)


def test_full_flow_upload_poll_download(server, media, tmp_path):
    r = _post(server, media)
    assert r.status_code == 202, r.text
    edit_id = r.json()["id"]
    assert len(edit_id) >= 20
    st = _wait(server, edit_id)
    assert st["state"] == "succeeded", st
    assert st["progress"] == 1.0 and st["frames"] == 8
    v = requests.get(f"{server}/v1/edits/{edit_id}/video", headers=_auth(), timeout=60)
    assert v.status_code == 200 and v.headers["content-type"] == "video/mp4"
    out = tmp_path / "edit.mp4"
    out.write_bytes(v.content)
    info = probe_output(str(out))
    assert info["codec"] == "h264" and info["frames"] == 8 and info["pix_fmt"] == "yuv420p"
    # another client cannot see, fetch or delete it
    assert requests.get(f"{server}/v1/edits/{edit_id}", headers=_auth(TOKEN_B), timeout=10).status_code == 404
    assert requests.delete(f"{server}/v1/edits/{edit_id}", headers=_auth(TOKEN_B), timeout=10).status_code == 404
    assert requests.delete(f"{server}/v1/edits/{edit_id}", headers=_auth(), timeout=30).status_code == 204
    assert requests.get(f"{server}/v1/edits/{edit_id}", headers=_auth(), timeout=10).status_code == 404


def test_auth_required(server, media):
    with open(media["source"], "rb") as s:
        r = requests.post(server + "/v1/edits", files={"source": s}, timeout=30)
    assert r.status_code == 401
    assert requests.get(server + "/v1/edits/abc", timeout=10).status_code == 401
    assert requests.get(server + "/v1/edits/abc", headers=_auth("wrong"), timeout=10).status_code == 401


def test_oversize_upload_is_413(server, media):
    big = media["dir"] / "big.mp4"
    big.write_bytes(b"\x00" * 600_000)
    with open(big, "rb") as s, open(media["driving"], "rb") as d:
        r = requests.post(server + "/v1/edits", headers=_auth(), data=PARAMS,
                          files={"source": ("big.mp4", s), "driving": ("d.mp4", d)}, timeout=60)
    assert r.status_code == 413, r.text


def test_bad_parameters_and_uris(server, media):
    r = _post(server, media, steps="many")
    assert r.status_code == 422 and "steps" in r.text
    r = requests.post(server + "/v1/edits", headers=_auth(), timeout=30,
                      data={**PARAMS, "source_uri": "file:///etc/passwd", "driving_uri": str(media["driving"])})
    assert r.status_code == 403 and "outside the allowed" in r.text
    r = requests.post(server + "/v1/edits", headers=_auth(), timeout=30,
                      data={**PARAMS, "source_uri": str(media["dir"]) + "/../../etc/passwd",
                            "driving_uri": str(media["driving"])})
    assert r.status_code == 403
    # an allow-listed storage URI works without uploading
    r = requests.post(server + "/v1/edits", headers=_auth(), timeout=30,
                      data={**PARAMS, "source_uri": str(media["source"]), "driving_uri": str(media["driving"])})
    assert r.status_code == 202, r.text
    assert _wait(server, r.json()["id"])["state"] == "succeeded"


def test_corrupt_video_is_refused_at_submission(server, media):
    r = _post(server, media, source="corrupt")
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("source: not a readable video"), r.text


def test_load_50_clients_queue_4(server, media):
    codes: list[int] = []
    ids: list[str] = []
    unexpected: list[str] = []
    health_ms: list[float] = []
    stop = threading.Event()

    def health():
        while not stop.is_set():
            t0 = time.perf_counter()
            h = requests.get(server + "/healthz", timeout=30)
            health_ms.append((time.perf_counter() - t0) * 1000)
            assert h.status_code == 200
            time.sleep(0.05)

    def client(_):
        r = _post(server, media)
        codes.append(r.status_code)
        if r.status_code not in (202, 429):
            unexpected.append(f"{r.status_code} {r.text[:200]}")
        if r.status_code == 202:
            ids.append(r.json()["id"])

    hb = threading.Thread(target=health, daemon=True)
    hb.start()
    with ThreadPoolExecutor(max_workers=50) as pool:
        list(pool.map(client, range(50)))
    time.sleep(1.0)
    stop.set()
    hb.join(timeout=30)
    assert set(codes) <= {202, 429}, unexpected
    assert len(codes) == 50 and codes.count(202) >= 1 and codes.count(429) >= 40
    states = [_wait(server, i)["state"] for i in ids]
    assert states == ["succeeded"] * len(ids)
    p99 = statistics.quantiles(health_ms, n=100)[98] if len(health_ms) >= 2 else health_ms[0]
    print(f"\nserve load: {codes.count(202)} accepted, {codes.count(429)} refused (429), "
          f"health p99 {p99:.1f} ms over {len(health_ms)} probes")
    assert p99 < 2000
    text = requests.get(server + "/metrics", timeout=10).text  # refusals are counted by code
    assert _http_count(text, "429") >= codes.count(429), text[-2000:]


def _http_count(metrics_text: str, code: str) -> float:
    """The total of ``mf_serve_http_requests_total`` samples with status ``code``, over all routes."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics_text.splitlines()
               if line.startswith("mf_serve_http_requests_total{") and f'code="{code}"' in line)


def test_metrics_exposed(server, media):
    r = _post(server, media)  # this test's own edit: it must not depend on the tests before it
    assert r.status_code == 202, r.text
    assert _wait(server, r.json()["id"])["state"] == "succeeded"
    text = requests.get(server + "/metrics", timeout=10).text
    for name in ("mf_requests_total", "mf_stage_seconds_bucket", "mf_queue_depth", "mf_windows_total",
                 "mf_serve_http_requests_total",
                 "mf_edit_seconds"):
        assert name in text, name
    assert 'mf_requests_total{status="succeeded"}' in text
    assert _http_count(text, "202") >= 1


# -- without a server: the body guard, caps, error scrubbing, expiry --------------------------------------------

class _Policy:
    def __init__(self, limits=None, refuse=None):
        self.limits, self.refuse = limits, refuse

    def admit(self, scope):
        if self.refuse:
            raise HTTPException(*self.refuse)
        return self.limits


def _guard(policy, messages, headers=()):
    """Run a :class:`BodyGuard` over ``messages`` (an endless source after them: a stalled body); returns the
    response status, how many messages it took, and the body the app saw (None when the app was not reached)."""
    taken, sent, seen = [], [], []

    async def receive():
        if len(taken) < len(messages):
            taken.append(messages[len(taken)])
            return taken[-1]
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    async def app(scope, receive, send):
        while True:
            m = await receive()
            seen.append(m["body"])
            if not m["more_body"]:
                break
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    asyncio.run(BodyGuard(app, lambda: policy)({"type": "http", "headers": list(headers)}, receive, send))
    return sent[0]["status"], len(taken), (b"".join(seen) if seen else None)


def test_body_guard_counts_streamed_bytes_and_stops_at_the_limit():
    chunk = {"type": "http.request", "body": b"x" * 1000, "more_body": True}
    limits = BodyLimits(max_bytes=10_000, idle_s=0.2, total_s=5)
    assert _guard(_Policy(limits), [chunk] * 100) == (413, 11, None)  # not one message past the limit
    assert _guard(_Policy(limits), [chunk] * 3) == (408, 3, None)  # then stalled
    assert _guard(_Policy(limits), [], [(b"content-length", b"10001")]) == (413, 0, None)
    assert _guard(_Policy(refuse=(401, "no")), [chunk] * 100) == (401, 0, None)
    body = [chunk] * 9 + [{"type": "http.request", "body": b"y" * 500, "more_body": False}]
    assert _guard(_Policy(limits), body) == (202, 10, b"x" * 9000 + b"y" * 500)  # the app gets it whole



def test_caps_name_the_cap():
    cfg = ServeConfig(max_steps=50, max_size=512, max_window=16, max_cost=10_000)
    form = FormData([("steps", "60"), ("size", "1024"), ("window", "24"), ("overlap", "0")])
    with pytest.raises(HTTPException) as err:
        parse_edit(form, "a" * 24, "/srv/x", cfg)
    assert err.value.status_code == 422
    assert all(cap in err.value.detail for cap in ("max_steps cap (50)", "max_size cap (512)", "max_window cap (16)"))
    req = parse_edit(FormData([("steps", "50"), ("size", "512"), ("window", "16"), ("overlap", "0")]),
                     "a" * 24, "/srv/x", cfg)
    check_cost(req, 192, cfg)  # 50 steps × 12 windows of 16 frames = 9600
    with pytest.raises(HTTPException) as err:
        check_cost(req, 193, cfg)  # 13 windows (the last one end-aligned): 10 400
    assert err.value.status_code == 422 and "edit cost 10400" in err.value.detail
    assert "max_cost cap (10000)" in err.value.detail


def test_guidance_scale_form_field_and_its_old_name():
    cfg = ServeConfig(defaults={"cfg": 2.0})  # an operator default under the old name
    assert parse_edit(FormData([]), "a" * 24, "/srv/x", cfg).guidance_scale == 2.0
    assert parse_edit(FormData([("guidance_scale", "5")]), "a" * 24, "/srv/x", cfg).guidance_scale == 5.0
    assert parse_edit(FormData([("cfg", "6")]), "a" * 24, "/srv/x", cfg).guidance_scale == 6.0
    with pytest.raises(HTTPException) as err:
        parse_edit(FormData([("cfg", "6"), ("guidance_scale", "5")]), "a" * 24, "/srv/x", cfg)
    assert err.value.status_code == 422 and "one parameter" in err.value.detail


def test_scrub_removes_paths_and_secrets():
    text = scrub("prepare: InputError: /srv/mf/edits/abc123/x/inputs/source.mp4: broken; s3://b/k.mp4 gone; "
                 "30000/1001 fps, MP4/MOV", "abc123")
    assert "/srv" not in text and "s3://" not in text and "abc123" not in text
    assert "30000/1001" in text and "MP4/MOV" in text


def test_sweep_expires_ended_edits_and_tombstones_in_bounded_passes(tmp_path):
    store = StateStore(str(tmp_path))
    ns, now = "ab" * 10, time.time()
    ids = [f"edit{i:02d}" + "x" * 12 for i in range(6)]
    for i, edit_id in enumerate(ids):
        store.write(ns, edit_id, {"id": edit_id, "state": ("succeeded", "failed", "cancelled")[i % 3]})
    gone = "gone" + "y" * 16
    store.bury(ns, gone)
    sweeper = Sweeper(store, retention_s=3600, budget=3)
    assert sweeper.run_once(now) == 0 and sweeper.run_once(now) == 0 and sweeper.run_once(now) == 0
    assert all(store.read(ns, i) for i in ids) and store.buried(ns, gone)  # nothing has expired yet
    later = now + 7200
    assert sweeper.run_once(later) <= 3  # bounded: at most `budget` entries per pass
    for _ in range(5):
        sweeper.run_once(later)
    assert not any(store.read(ns, i) for i in ids) and not list((tmp_path / "edits" / ns).iterdir())
    assert not store.buried(ns, gone)
    lost = "lost" + "z" * 16  # running, but its state has not changed for longer than the retention
    store.write(ns, lost, {"id": lost, "state": "running"})
    assert sweeper._edit(ns, lost, later) == 1
    assert store.buried(ns, lost) and not (tmp_path / "edits" / ns / lost).exists()


def test_alignment_and_subject_form_fields():
    cfg = ServeConfig()
    req = parse_edit(FormData([("align_mode", "limbs"), ("source_subject", "120, 80"),
                               ("driving_subject", "10,20,110,300")]), "a" * 24, "/srv/x", cfg)
    assert req.align_mode == "limbs" and req.source_subject == '{"point":[120,80]}'
    assert req.driving_subject == '{"box":[10,20,110,300]}'
    with pytest.raises(HTTPException) as err:
        parse_edit(FormData([("source_subject", "120")]), "a" * 24, "/srv/x", cfg)
    assert err.value.status_code == 422 and "source_subject" in err.value.detail
