"""The configuration of one batch run, in three parts with one reason to change each.

- :class:`ModelSpec` — which model the edit actors load (weights, preset, dtype, device) and the one rule that picks
  device and dtype from the GPUs an actor gets (:meth:`ModelSpec.for_gpus`).
- :class:`StageResources` — the stages' pool sizes and CPU/GPU/memory shares; :meth:`StageResources.for_cluster`, the
  one rule that sizes them for a cluster (a :class:`ClusterShape`: what is up, and the node types an autoscaler can
  add), and :meth:`StageResources.fit`, which shrinks the CPU shares to fit a fixed number of CPUs.
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
from pipelines.conditioning.poses.registry import BACKENDS, DEFAULT_BACKEND
from pipelines.media import storage
from pipelines.media.geometry import DEFAULT_FIT_MODE, FIT_MODES

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


Resources = tuple[tuple[str, float], ...]  # Ray resource name -> amount, as a hashable, picklable tuple


def _resources(d: Any) -> Resources:
    return tuple(sorted((str(k), float(v)) for k, v in dict(d or {}).items()))


@dataclass(frozen=True)
class NodeType:
    """A kind of node an autoscaling cluster can run: its Ray resources per node (``CPU``, ``GPU``, ``memory`` in
    bytes, custom ones) and how many of it the autoscaler may run (``max_count`` -1: no limit)."""

    name: str
    resources: Resources = ()
    max_count: int = 0
    min_count: int = 0

    def get(self, key: str) -> float:
        return dict(self.resources).get(key, 0.0)

    def holds(self, demand: dict[str, float]) -> bool:
        """One node of this type can hold ``demand`` (unknown memory counts as enough: Ray fills it at start)."""
        have = dict(self.resources)
        return all(v <= 0 or (k == "memory" and k not in have) or have.get(k, 0.0) >= v for k, v in demand.items())


@dataclass(frozen=True)
class ClusterShape:
    """The Ray cluster a run is sized for: what is up now (``nodes``, ``resources`` as ``ray.cluster_resources()``
    reports them) and whether an autoscaler can add nodes; where its node types are known (the autoscaler's config:
    ``ray up``'s ``available_node_types``, Ray's own cluster config in the GCS), ``node_types`` lists them.

    A static cluster (a local Ray, a ``ray start`` cluster without an autoscaler) has ``autoscaling`` False: what is
    up is all there will be. Built by ``jobs.runtime.cluster_shape`` from the connected Ray, or by hand in tests."""

    nodes: int = 1
    resources: Resources = ()
    autoscaling: bool = False
    node_types: tuple[NodeType, ...] = ()  # empty: not known (an autoscaling cluster whose config mf cannot read)
    source: str = "static"  # where the shape came from (logged)

    @classmethod
    def static(cls, nodes: int, cpus: float, gpus: float = 0.0, **resources: float) -> ClusterShape:
        """A cluster of ``nodes`` nodes that stays as it is."""
        return cls(nodes=max(1, int(nodes)), resources=_resources({"CPU": cpus, "GPU": gpus, **resources}))

    @classmethod
    def from_autoscaler_config(cls, config: dict, *, nodes: int = 1, resources: Optional[dict] = None,
                               source: str = "autoscaler config") -> ClusterShape:
        """The shape of a cluster whose autoscaler runs ``config`` (a cluster-launcher config as ``ray up`` writes
        it to the head: ``available_node_types`` with ``resources``, ``min_workers``/``max_workers``, the
        ``head_node_type`` and a global ``max_workers``)."""
        types = config.get("available_node_types") or {}
        head = config.get("head_node_type")
        cap = int(config.get("max_workers", -1) if config.get("max_workers") is not None else -1)
        out = []
        for name, spec in types.items():
            spec = spec or {}
            if name == head:
                lo = hi = 1
            else:
                lo = int(spec.get("min_workers", 0) or 0)
                hi = int(spec.get("max_workers", cap) if spec.get("max_workers") is not None else cap)
                if cap >= 0:
                    hi = min(hi, cap) if hi >= 0 else cap
            out.append(NodeType(name=str(name), resources=_resources(spec.get("resources")), max_count=hi,
                                min_count=lo))
        grows = any(t.max_count != t.min_count for t in out if t.name != head)
        return cls(nodes=max(1, int(nodes)), resources=_resources(resources), autoscaling=grows,
                   node_types=tuple(out), source=source)

    def now(self, key: str) -> float:
        return dict(self.resources).get(key, 0.0)

    def most(self, key: str) -> float:
        """The most of resource ``key`` the cluster can have: what is up on a static cluster; on an autoscaling
        one, its node types at their maximum counts (``inf`` when a count is unlimited or the types are unknown)."""
        if not self.autoscaling:
            return self.now(key)
        if not self.node_types:
            return math.inf
        total = 0.0
        for t in self.node_types:
            if t.get(key) > 0 and t.max_count < 0:
                return math.inf
            total += max(t.max_count, 0) * t.get(key)
        return max(total, self.now(key))

    def can_have(self, key: str) -> Optional[bool]:
        """Whether the cluster has or can get resource ``key``: None when it autoscales with node types unknown."""
        if self.now(key) > 0:
            return True
        if not self.autoscaling:
            return False
        if not self.node_types:
            return None
        return any(t.get(key) > 0 and t.max_count != 0 for t in self.node_types)

    @property
    def multi_node(self) -> bool:
        """More than one node now, or possibly later (an autoscaler that can add nodes)."""
        return self.nodes > 1 or self.autoscaling

    def gpus_per_actor(self, requested: Optional[float]) -> float:
        """The GPUs each edit actor asks for: ``requested`` as given; else 1 when the cluster has GPUs or a node type
        it can add has them (the autoscaler then adds a GPU node for each actor), else 0 (the model on the CPU; also
        where an autoscaling cluster's node types are unknown: pass ``--gpus-per-actor`` there)."""
        if requested is not None:
            return float(requested)
        return 1.0 if self.can_have("GPU") else 0.0

    def describe(self) -> str:
        if not self.autoscaling:
            return f"static, {self.nodes} node(s), {self.now('CPU'):g} CPU, {self.now('GPU'):g} GPU"
        if not self.node_types:
            return f"autoscaling ({self.source}), node types unknown; up now: {self.nodes} node(s)"
        kinds = ", ".join(f"{t.name} {t.min_count}..{'inf' if t.max_count < 0 else t.max_count} x "
                          f"{t.get('CPU'):g} CPU/{t.get('GPU'):g} GPU" for t in self.node_types)
        return f"autoscaling ({self.source}): {kinds}"


@dataclass(frozen=True)
class StageResources:
    """Pool sizes and per-task/per-actor shares of the stages (see :mod:`pipelines.batch.ray_stages`); the defaults
    are what the work needs (:meth:`for_cluster` sizes them for a cluster)."""

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
    # the actor pools grow from 1 to their sizes (Ray Data's autoscaling pools) instead of starting at their sizes:
    # set by for_cluster on an autoscaling cluster (see there)
    autoscale: bool = False

    def pool(self, size: int) -> tuple[int, int, int]:
        """``(min, initial, max)`` actors of a pool of ``size`` actors: ``(1, size, size)`` with :attr:`autoscale`
        (all of it asked for at the start, so the autoscaler brings up the nodes for the whole pool at once; Ray Data
        may shrink it to 1 when it idles and grow it back), else fixed ``(size, size, size)``."""
        size = max(1, int(size))
        return (1 if self.autoscale else size, size, size)

    def demands(self) -> dict[str, dict[str, float]]:
        """What one worker of each stage asks Ray for: ``{"edit": {...}, "prepare": {...}, "plan": ..., "stitch":
        ...}`` in Ray's resource names (memory in bytes)."""
        return {"edit": {"CPU": self.cpus_per_actor, "GPU": self.gpus_per_actor, **dict(self.edit_resources)},
                "prepare": {"CPU": self.prepare_cpus, "memory": float(self.prepare_memory),
                            **dict(self.prepare_resources)},
                "plan": {"CPU": self.plan_cpus, "memory": float(self.plan_memory)},
                "stitch": {"CPU": self.stitch_cpus}}

    def for_cluster(self, shape: ClusterShape) -> StageResources:
        """The resources this run asks for on ``shape``: the one rule that sizes the stages for a cluster.

        - **Static cluster** (a local Ray: ``mf retarget`` or ``mf demo`` on a laptop; a cluster with no autoscaler):
          what is up is all there will be, so the CPU shares are fitted to its CPUs (:meth:`fit`: both pools plus
          one plan and one stitch task at once).
        - **Autoscaling cluster**: the run asks for what its work needs, the shares as given (defaults: 1 CPU per
          edit and per prepare actor, 0.5 per plan task, 1 per stitch task, :attr:`plan_memory` per plan task and
          :attr:`prepare_memory` per prepare actor, ``gpus_per_actor`` GPUs per edit actor), and the autoscaler adds
          the nodes for them; nothing is sized from what happens to be up at the start (a head with ``CPU: 0`` and
          worker groups at zero). Where the node types are known, the shares are fitted only to what the cluster can
          grow to: the CPUs of every node type at its maximum count (:meth:`fit`), and each share to the largest
          node type that could hold its worker (an edit actor's CPU on a GPU node type). ``ValueError`` when no node
          type can ever hold an edit or a prepare actor: such a run would wait forever for a node nobody starts.
          Where the node types are unknown, the shares are kept as asked.

        On an autoscaling cluster the actor pools autoscale too (:attr:`autoscale`, :meth:`pool`): Ray Data's
        autoscaling pools from 1 to ``actors`` / ``prepare_actors``, started at their full size (the autoscaler
        brings up the nodes of the pool the run asked for at once: starting at 1, Ray Data grows a pool only when
        its utilization passes 1.75, which a short run never does, and measured on the fake-provider cluster it then
        brought up 1 of 2 edit nodes), shrinking while it idles (upstream starved, a long tail: the autoscaler can
        take the idle nodes back) and growing back while work queues; on a static cluster the pools are fixed.

        The GPU share itself is decided before (:meth:`ClusterShape.gpus_per_actor`: the model's device and dtype
        follow from it) and is never changed here; with ``auto_fit`` off nothing is.
        """
        if not self.auto_fit:
            return self
        if not shape.autoscaling:
            return self.fit(shape.now("CPU"))
        return dataclasses.replace(self._fit_autoscaling(shape), autoscale=True)

    def _fit_autoscaling(self, shape: ClusterShape) -> StageResources:
        if not shape.node_types:
            log.info("autoscaling cluster, node types unknown: stages ask for edit %g CPU/%g GPU, prepare %g CPU, "
                     "plan %g CPU, stitch %g CPU", self.cpus_per_actor, self.gpus_per_actor, self.prepare_cpus,
                     self.plan_cpus, self.stitch_cpus)
            return self
        fitted = self
        need = self.demands()
        for stage, cpu_field in (("edit", "cpus_per_actor"), ("prepare", "prepare_cpus"), ("plan", "plan_cpus"),
                                 ("stitch", "stitch_cpus")):
            others = {k: v for k, v in need[stage].items() if k != "CPU"}
            able = [t for t in shape.node_types if t.max_count != 0 and t.holds(others)]
            if not able:
                if stage in ("edit", "prepare"):
                    raise ValueError(f"no node type of this cluster can hold a {stage} actor ({_demand(others)}): "
                                     f"{shape.describe()}; change the run's resources or the cluster's node types")
                continue
            largest = max(t.get("CPU") for t in able)
            if largest > 0 and getattr(fitted, cpu_field) > largest:
                fitted = dataclasses.replace(fitted, **{cpu_field: largest})
        fitted = fitted.fit(shape.most("CPU")) if math.isfinite(shape.most("CPU")) else fitted
        log.info("autoscaling cluster (%s): edit actors %g CPU/%g GPU, prepare actors %g CPU, plan/stitch tasks "
                 "%g/%g CPU", shape.describe(), fitted.cpus_per_actor, fitted.gpus_per_actor, fitted.prepare_cpus,
                 fitted.plan_cpus, fitted.stitch_cpus)
        return fitted

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


def _demand(d: dict[str, float]) -> str:
    return ", ".join(f"{k} {v / 2**30:.2g} GiB" if k == "memory" else f"{k} {v:g}" for k, v in d.items() if v > 0) \
        or "nothing"


@dataclass(frozen=True)
class ProcessingOptions:
    """How windows are prepared, retried, stitched and encoded."""

    pose_backend: str = DEFAULT_BACKEND  # one of pipelines.conditioning.poses.registry.BACKENDS
    fit_mode: str = DEFAULT_FIT_MODE  # one of pipelines.media.geometry.FIT_MODES
    max_retries: int = 2  # extra attempts of a window whose edit actor died (system failures only)
    crossfade: bool = True
    output_scale: str = "source"  # of OUTPUT_SCALES: "source": edit upscaled to the source resolution; "model"
    compress_windows: bool = False
    keep_windows: bool = False  # keep <out>/windows/<request_id>/ after the request's video is committed
    encode_preset: str = "medium"
    encode_crf: int = 18

    def __post_init__(self) -> None:
        for name, value, allowed in (("pose_backend", self.pose_backend, BACKENDS),
                                     ("fit_mode", self.fit_mode, FIT_MODES),
                                     ("output_scale", self.output_scale, OUTPUT_SCALES)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, not {self.max_retries}")


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
    # the cluster as the caller read it (jobs.runtime.cluster_shape); None: for_cluster's numbers (a static cluster)
    cluster: Optional[ClusterShape] = None

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

    def for_cluster(self, shape: ClusterShape) -> RunConfig:
        """This config as the Ray stages run it on the cluster ``shape``: the stage resources sized for it
        (:meth:`StageResources.for_cluster`), and the shape recorded.

        ``ValueError`` when the stages' processes could not all write ``out``: ``memory://`` (private to one
        process), or a local path on a cluster that has or can get more than one node (an autoscaler adding workers
        counts) unless ``shared_fs`` declares it a mount every node sees."""
        if storage.protocol_of(self.out) == "memory":
            raise ValueError("memory:// is private to one process and Ray stages run in others: use a shared "
                             "filesystem (local path, s3://, gs://) for --out, or pipelines.batch.single.edit_request")
        if shape.multi_node and storage.is_local(self.out) and not self.shared_fs:
            nodes = (f"has {shape.nodes} nodes" if shape.nodes > 1 else
                     "autoscales (its autoscaler adds worker nodes)")
            raise ValueError(f"--out {self.out} is a local path and the Ray cluster {nodes}, whose workers "
                             "would each write to their own disk: use s3:// or gs://, or declare a mount every node "
                             "sees with --shared-fs")
        return dataclasses.replace(self, resources=self.resources.for_cluster(shape), cluster=shape)

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
    gpus_per_actor: Optional[float] = None  # None: ClusterShape.gpus_per_actor (1 when the cluster has or can get GPUs)
    actors: int = StageResources.actors
    prepare_actors: int = StageResources.prepare_actors
    cpus_per_actor: float = StageResources.cpus_per_actor  # fitted to the cluster (StageResources.for_cluster)
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
