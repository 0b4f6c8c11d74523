"""The configuration of one batch run, in three parts with one reason to change each.

- :class:`ModelSpec` — which model the edit actors load (weights, preset, dtype, device) and the one rule that picks
  device and dtype from the GPUs an actor gets (:meth:`ModelSpec.for_gpus`).
- :class:`StageResources` — the stages' pool sizes and CPU/GPU shares, and :meth:`StageResources.fit`, which shrinks
  the CPU shares to fit a small cluster.
- :class:`ProcessingOptions` — how windows are prepared, stitched and encoded.

:class:`RunConfig` joins them with the paths of a run. Everything is a frozen dataclass: a config is shipped to the
stages (Ray pickles it) and never changes on the way.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Optional

from pipelines.media import storage

log = logging.getLogger(__name__)

DTYPES = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class ModelSpec:
    """The model of a run: ``weights`` None means the preset with seeded random weights."""

    weights: Optional[str] = None
    preset: str = "tiny"
    dtype: str = "fp32"
    device: str = "cpu"

    @classmethod
    def for_gpus(cls, gpus: float, weights: Optional[str] = None, preset: str = "tiny",
                 dtype: Optional[str] = None) -> ModelSpec:
        """CUDA when the actor holds a GPU share, else CPU; dtype default fp16 on CUDA, fp32 on CPU."""
        device = "cuda" if gpus > 0 else "cpu"
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        return cls(weights=weights, preset=preset, dtype=dtype or ("fp16" if device == "cuda" else "fp32"),
                   device=device)

    def load(self):
        """Load the model (in the process that will use it)."""
        import mf_model

        return mf_model.load_model(self.weights, preset_name=self.preset, dtype=self.dtype, device=self.device)


@dataclass(frozen=True)
class StageResources:
    """Pool sizes and per-task/per-actor shares of the stages (see :mod:`pipelines.batch.ray_stages`)."""

    actors: int = 1  # edit actors (fixed pool)
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    prepare_actors: int = 1
    prepare_cpus: float = 1.0  # per prepare actor
    plan_cpus: float = 0.5  # per plan task (probe + reference alignment)
    stitch_cpus: float = 1.0  # per stitch task (ffmpeg runs inside)
    auto_fit: bool = True  # shrink the CPU shares above to fit the cluster (see fit)
    # custom Ray resources each actor asks for, e.g. (("edit_node", 1.0),): pins a pool to the nodes that have them
    edit_resources: tuple[tuple[str, float], ...] = ()
    prepare_resources: tuple[tuple[str, float], ...] = ()

    def fit(self, cluster_cpus: float) -> StageResources:
        """CPU shares that fit the cluster: both actor pools plus one plan and one stitch task must fit at once.

        On a big enough cluster (or with ``auto_fit`` off) ``self`` is returned unchanged. Otherwise plan and stitch
        tasks get ``min(0.25, cpus / 8)`` CPU each and the actors share the rest equally (never more than asked), so
        the pools can never starve the tasks that feed and drain them. Raises ``ValueError`` when the pools cannot
        fit at all (less than 0.05 CPU per actor).
        """
        if not self.auto_fit:
            return self
        edit, prep = max(1, self.actors), max(1, self.prepare_actors)
        need = edit * self.cpus_per_actor + prep * self.prepare_cpus + self.plan_cpus + self.stitch_cpus
        if need <= cluster_cpus:
            return self
        task = round(min(0.25, cluster_cpus / 8), 3)
        per = (cluster_cpus - 2 * task) / (edit + prep)
        if per < 0.05:
            raise ValueError(f"a cluster with {cluster_cpus:g} CPUs cannot hold {self.actors} edit and "
                             f"{self.prepare_actors} prepare actors; use fewer --actors/--prepare-actors")
        per = math.floor(per * 1000) / 1000
        fitted = dataclasses.replace(self, plan_cpus=min(self.plan_cpus, task),
                                     stitch_cpus=min(self.stitch_cpus, task),
                                     cpus_per_actor=min(self.cpus_per_actor, per),
                                     prepare_cpus=min(self.prepare_cpus, per))
        log.info("cluster has %g CPUs: edit actors %g CPU, prepare actors %g CPU, plan/stitch tasks %g/%g CPU",
                 cluster_cpus, fitted.cpus_per_actor, fitted.prepare_cpus, fitted.plan_cpus, fitted.stitch_cpus)
        return fitted

    def as_dict(self) -> dict[str, float]:
        return {"edit_actor_cpus": self.cpus_per_actor, "prepare_actor_cpus": self.prepare_cpus,
                "plan_cpus": self.plan_cpus, "stitch_cpus": self.stitch_cpus, "gpus_per_actor": self.gpus_per_actor}


@dataclass(frozen=True)
class ProcessingOptions:
    """How windows are prepared, retried, stitched and encoded."""

    pose_backend: str = "mediapipe"
    fit_mode: str = "pad"
    max_retries: int = 2  # extra attempts of a window whose edit actor died (system failures only)
    crossfade: bool = True
    output_scale: str = "source"  # "source": edit upscaled to the source resolution; "model": model scale
    compress_windows: bool = False
    keep_windows: bool = False  # keep <out>/windows/<request_id>/ after the request's video is committed
    encode_preset: str = "medium"
    encode_crf: int = 18


@dataclass(frozen=True)
class RunConfig:
    """Everything one ``mf retarget`` run needs: the manifest, the output root and the three parts above."""

    manifest: str
    out: str
    model: ModelSpec = field(default_factory=ModelSpec)
    resources: StageResources = field(default_factory=StageResources)
    processing: ProcessingOptions = field(default_factory=ProcessingOptions)
    results_name: str = "results.parquet"
    run_id: str = ""  # set per run by the driver (scopes the window attempt counters)
    shared_fs: bool = False  # a local-path --out is a mount every node of a multi-node cluster sees

    @property
    def results_uri(self) -> str:
        return storage.join(self.out, self.results_name)

    def marker_uri(self, request_id: str) -> str:
        return storage.join(self.out, "requests", f"{request_id}.json")

    def window_uri(self, request_id: str, wid: str) -> str:
        return storage.join(self.out, "windows", request_id, f"{wid}.npz")
