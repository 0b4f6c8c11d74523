from __future__ import annotations

import urllib.request

import pytest

from pipelines.batch.metrics import PipelineMetrics, default_metrics, start_metrics_server
from pipelines.batch.results import ResultRow

NAMES = ["mf_requests_total", "mf_windows_total", "mf_frames_total", "mf_stage_seconds", "mf_edit_seconds",
         "mf_actor_busy_seconds_total", "mf_queue_depth", "mf_gpu_memory_peak_bytes", "mf_frames_per_second"]


def test_rows_update_metrics():
    m = PipelineMetrics()
    m.start_run()
    m.record_window_row({"status": "succeeded", "seconds_prepare": 0.2, "seconds_edit": 1.5, "edit_seconds": 1.4,
                         "actor_busy_seconds": 1.5, "gpu_memory_peak_bytes": 1000})
    m.record_window_row({"status": "failed", "actor_busy_seconds": 0.5, "gpu_memory_peak_bytes": 500})
    m.record_result_row(ResultRow("a", "succeeded", frames=100, seconds_total=9.0, seconds_stitch=1.0))
    m.record_result_row(ResultRow("b", "failed", frames=None))
    m.record_result_row(ResultRow("c", "skipped"))
    m.set_queue_depth(3)
    assert m.value("mf_windows_total", {"status": "succeeded"}) == 1
    assert m.value("mf_windows_total", {"status": "failed"}) == 1
    assert m.value("mf_requests_total", {"status": "succeeded"}) == 1
    assert m.value("mf_requests_total", {"status": "failed"}) == 1
    assert m.value("mf_requests_total", {"status": "skipped"}) == 1
    assert m.value("mf_frames_total") == 100
    assert m.value("mf_frames_per_second") > 0
    assert m.value("mf_actor_busy_seconds_total", {"stage": "edit"}) == pytest.approx(2.0)
    assert m.value("mf_gpu_memory_peak_bytes") == 1000
    assert m.value("mf_queue_depth") == 3
    assert m.value("mf_edit_seconds_count") == 1
    assert m.value("mf_stage_seconds_count", {"stage": "prepare"}) == 1
    assert m.value("mf_stage_seconds_sum", {"stage": "total"}) == 9.0
    with pytest.raises(ValueError):
        m.request_finished("done")
    text = m.render().decode()
    for name in NAMES:
        assert name in text


def test_registries_are_private():
    a, b = PipelineMetrics(), PipelineMetrics()  # no duplicate-registration error
    a.add_frames(5)
    assert b.value("mf_frames_total") == 0
    assert default_metrics() is default_metrics()


def test_http_server():
    m = PipelineMetrics()
    m.request_finished("succeeded", frames=7)
    server = start_metrics_server(0, m, addr="127.0.0.1")
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5).read().decode()
        assert 'mf_requests_total{status="succeeded"} 1.0' in body
        assert "mf_frames_total 7.0" in body
    finally:
        server.shutdown()
