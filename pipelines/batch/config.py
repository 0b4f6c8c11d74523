"""The configuration of one batch run, in three parts with one reason to change each.

- :class:`ModelSpec` — which model the edit actors load (weights, preset, dtype, device) and the one rule that picks
  device and dtype from the GPUs an actor gets (:meth:`ModelSpec.for_gpus`).
- :class:`StageResources` — the stages' pool sizes and CPU/GPU shares, and :meth:`StageResources.fit`, which shrinks
  the CPU shares to fit a small cluster.
- :class:`ProcessingOptions` — how windows are prepared, stitched and encoded.

:class:`RunConfig` joins them with the paths of a run. Everything is a frozen dataclass: a config is shipped to the
stages (Ray pickles it) and never changes on the way.

:class:`RunOptions` is a run as a user states it — flat, every option with its one default — and
:meth:`RunConfig.build` the one place that turns options into a config: ``mf retarget`` (whose flags take their
defaults from :class:`RunOptions`), ``mf demo``, ``mf dataset run`` (a spec's ``run:``) and the Serve worker all
build theirs there. :meth:`RunConfig.for_cluster` is the config as the Ray driver runs it on a given cluster.

The enums and defaults that are not this module's own come from their one home: preset names, the default preset
and the dtype names from :mod:`mf_model.config`, the pose backends from :mod:`pipelines.conditioning.poses.registry`.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from mf_model.config import DEFAULT_PRESET, DTYPES
from pipelines.conditioning.poses.registry import DEFAULT_BACKEND
from pipelines.media import storage

log = logging.getLogger(__name__)

OUTPUT_SCALES = ("source", "model")  # ProcessingOptions.output_scale


@dataclass(frozen=True)
class ModelSpec:
    """The model of a run: ``weights`` None means the preset with seeded random weights."""

    weights: Optional[str] = None
    preset: str = DEFAULT_PRESET  # one of mf_model.config.PRESETS
    dtype: str = "fp32"  # one of mf_model.config.DTYPES
    device: str = "cpu"

    @classmethod
    def for_gpus(cls, gpus: float, weights: Optional[str] = None, preset: str = DEFAULT_PRESET,
                 dtype: Optional[str] = None) -> ModelSpec:
        """CUDA when the actor holds a GPU share, else CPU; dtype default fp16 on CUDA, fp32 on CPU. ``ValueError``
        for a dtype not in :data:`mf_model.config.DTYPES` (short names only)."""
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
    # memory (bytes) a plan task and a prepare actor ask Ray for: what they use with MediaPipe on a CPU (640-770 MiB
    # measured by Ray Data's memory detector on 96-512 px inputs) with head-room, so an autoscaler can size nodes
    plan_memory: int = 1 << 30
    prepare_memory: int = 1 << 30
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

    pose_backend: str = DEFAULT_BACKEND  # one of pipelines.conditioning.poses.registry.BACKENDS
    fit_mode: str = "pad"
    max_retries: int = 2  # extra attempts of a window whose edit actor died (system failures only)
    crossfade: bool = True
    output_scale: str = "source"  # of OUTPUT_SCALES: "source": edit upscaled to the source resolution; "model"
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

    @classmethod
    def build(cls, options: Optional[RunOptions] = None, *, manifest: str, out: str, gpus: Optional[float] = None,
              **fields: Any) -> RunConfig:
        """The config of a run stated as :class:`RunOptions` (default: every option's default).

        ``gpus``: the GPU share of each edit actor as the caller resolved it against its cluster
        (``jobs.runtime.gpus_per_actor(options.gpus_per_actor)``); None takes ``options.gpus_per_actor`` as is
        (0, CPU, when that is None too). The model's device and dtype follow from it (:meth:`ModelSpec.for_gpus`,
        ``ValueError`` for an unknown dtype). ``fields``: the other :class:`RunConfig` fields (``results_name``,
        ``run_id``). Paths are used as given (the caller makes local ones absolute).
        """
        o = options or RunOptions()
        share = float((o.gpus_per_actor or 0.0) if gpus is None else gpus)
        return cls(
            manifest=manifest, out=out,
            model=ModelSpec.for_gpus(share, weights=o.weights, preset=o.preset, dtype=o.dtype),
            resources=StageResources(actors=o.actors, gpus_per_actor=share, cpus_per_actor=o.cpus_per_actor,
                                     prepare_actors=o.prepare_actors, prepare_cpus=o.prepare_cpus,
                                     edit_resources=o.edit_resources, prepare_resources=o.prepare_resources),
            processing=ProcessingOptions(pose_backend=o.pose_backend, max_retries=o.max_retries,
                                         crossfade=o.crossfade, output_scale=o.output_scale,
                                         keep_windows=o.keep_windows),
            shared_fs=o.shared_fs, **fields)

    def for_cluster(self, nodes: int, cpus: float) -> RunConfig:
        """This config as the Ray stages run it on a cluster of ``nodes`` live nodes and ``cpus`` CPUs: the stage
        resources fitted to it (:meth:`StageResources.fit`). ``ValueError`` when the stages' processes could not
        all write ``out``: ``memory://`` (private to one process), or a local path on a multi-node cluster unless
        ``shared_fs`` declares it a mount every node sees."""
        if storage.protocol_of(self.out) == "memory":
            raise ValueError("memory:// is private to one process and Ray stages run in others: use a shared "
                             "filesystem (local path, s3://, gs://) for --out, or pipelines.batch.single.edit_request")
        if nodes > 1 and storage.is_local(self.out) and not self.shared_fs:
            raise ValueError(f"--out {self.out} is a local path and the Ray cluster has {nodes} nodes, whose workers "
                             "would each write to their own disk: use s3:// or gs://, or declare a mount every node "
                             "sees with --shared-fs")
        return dataclasses.replace(self, resources=self.resources.fit(cpus))

    @property
    def results_uri(self) -> str:
        return storage.join(self.out, self.results_name)

    def marker_uri(self, request_id: str) -> str:
        return storage.join(self.out, "requests", f"{request_id}.json")

    def window_uri(self, request_id: str, wid: str) -> str:
        return storage.join(self.out, "windows", request_id, f"{wid}.npz")


@dataclass(frozen=True)
class RunOptions:
    """A run as a user states it (``mf retarget``'s flags, a dataset spec's ``run:``, the Serve app's model
    settings, ``mf demo``): flat, every option with its one default — where an option lands in a part of
    :class:`RunConfig`, that part's default (a dataclass field's plain default is its class attribute).
    :meth:`RunConfig.build` turns them into a config."""

    # the model (ModelSpec)
    weights: Optional[str] = ModelSpec.weights  # None: the preset with seeded random weights
    preset: str = ModelSpec.preset  # one of mf_model.config.PRESETS
    dtype: Optional[str] = None  # one of mf_model.config.DTYPES; None: fp16 on GPU, fp32 on CPU (for_gpus)
    # the stages (StageResources)
    gpus_per_actor: Optional[float] = None  # None: the caller's rule (jobs.runtime: 1 when the cluster has GPUs)
    actors: int = StageResources.actors
    prepare_actors: int = StageResources.prepare_actors
    cpus_per_actor: float = StageResources.cpus_per_actor  # shrunk to fit a small cluster (StageResources.fit)
    prepare_cpus: float = StageResources.prepare_cpus  # likewise
    edit_resources: tuple[tuple[str, float], ...] = StageResources.edit_resources
    prepare_resources: tuple[tuple[str, float], ...] = StageResources.prepare_resources
    # processing (ProcessingOptions)
    pose_backend: str = ProcessingOptions.pose_backend
    max_retries: int = ProcessingOptions.max_retries
    crossfade: bool = ProcessingOptions.crossfade
    output_scale: str = ProcessingOptions.output_scale
    keep_windows: bool = ProcessingOptions.keep_windows
    # the run (RunConfig)
    shared_fs: bool = RunConfig.shared_fs
