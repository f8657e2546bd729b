"""``DaskRunner``: run a Kedro pipeline's nodes on a ``dask.distributed`` cluster.

``kedro run --runner cellsynth.runners.DaskRunner`` starts a ``LocalCluster`` on 127.0.0.1;
``--runner-params address=tcp://host:8786`` (or Dask's own ``scheduler-address`` setting, e.g. the
``DASK_SCHEDULER_ADDRESS`` environment variable) sends the nodes to a running scheduler instead,
such as one of dask-jobqueue's ``SLURMCluster``.

What crosses workers, and what does not
---------------------------------------
A Dask worker is another process, possibly on another machine, so the runner never hands a node's
data to the next node through Dask. Nodes exchange data through their catalog entries: a persisted
dataset (an ``.h5ad``, a Parquet file, a model folder) is saved by one worker and loaded by the next,
which is why the project folder must lie on a path every worker sees. Nodes joined by an in-memory
dataset (a ``MemoryDataset``, declared or not, e.g. ``qc_cells`` between quality control and
normalisation) are *co-located*: they form one Dask task and run one after the other in the same
worker process, so in-memory AnnData objects never leave the process that made them. An in-memory
pipeline *input* that holds an ``AnnData`` is refused before anything runs.

Each Dask task carries only what its nodes need: the nodes (pickled by the runner), a catalog of
their own datasets (parameters included), the driver's working directory (relative catalog paths
resolve against it), the project package to bootstrap on the worker and the MLflow context of the
run (:func:`cellsynth.tracking.run_context`), so child runs land under the driver's parent run.

Hooks: ``before_pipeline_run`` / ``after_pipeline_run`` (the MLflow parent run) run in the driver.
Node and dataset hooks run on the worker that runs the node, with the project's hooks as that worker
imports them (their state is not shared with the driver's).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import traceback
import uuid
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kedro.io import DataCatalog
from kedro.pipeline import Pipeline
from kedro.runner import AbstractRunner

if TYPE_CHECKING:
    from distributed import Client
    from kedro.io import CatalogProtocol
    from kedro.pipeline.node import Node
    from pluggy import PluginManager

log = logging.getLogger(__name__)

#: Environment variables copied from the driver onto every worker (``setdefault``: a worker's own
#: value wins). Telemetry must stay off on workers too; ``MLFLOW_*`` carries credentials/settings of
#: the tracking server.
FORWARDED_ENV_NAMES = ("KEDRO_DISABLE_TELEMETRY", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")
FORWARDED_ENV_PREFIXES = ("MLFLOW_",)


class NodeFailedError(RuntimeError):
    """A node raised on a Dask worker; carries the node's name and the worker's traceback.

    Parameters
    ----------
    node_name
        Full name of the node (e.g. ``maf.fold_0.generate_cells``).
    worker
        Address of the worker that ran it.
    remote_traceback
        The traceback as formatted on the worker.
    """

    def __init__(self, node_name: str, worker: str, remote_traceback: str) -> None:
        self.node_name = node_name
        self.worker = worker
        self.remote_traceback = remote_traceback
        super().__init__(f"Node {node_name!r} failed on Dask worker {worker}:\n{remote_traceback.rstrip()}")

    def __reduce__(self) -> tuple[Any, ...]:  # exceptions travel back to the driver pickled
        return (type(self), (self.node_name, self.worker, self.remote_traceback))


@dataclass(frozen=True)
class TaskRecord:
    """Where and when one Dask task (one node, or co-located nodes) ran."""

    nodes: tuple[str, ...]
    worker: str
    pid: int
    started: float
    finished: float


@dataclass
class _Group:
    """Nodes that run as one Dask task (joined by in-memory datasets), in topological order."""

    nodes: list[Node]
    depends_on: set[int] = field(default_factory=set)

    @property
    def label(self) -> str:
        return " + ".join(n.name for n in self.nodes)


@dataclass(frozen=True)
class _WorkerSpec:
    """Plain data a worker needs before it can unpickle a task's nodes."""

    package_name: str | None
    logging_config: dict[str, Any] | None
    working_directory: str
    environment: dict[str, str]


class DaskRunner(AbstractRunner):
    """Submit a pipeline's nodes to a ``dask.distributed`` cluster.

    Independent nodes (e.g. the generator × fold namespaces) run at the same time on different
    workers; a node is submitted once every node it depends on has finished. The first node that
    fails stops the run: tasks not yet started are cancelled and :class:`NodeFailedError` (node
    name, worker, the worker's traceback) is raised in the driver.

    Parameters
    ----------
    address
        Scheduler to connect to, e.g. ``tcp://10.0.0.5:8786``. Default: Dask's ``scheduler-address``
        setting (``DASK_SCHEDULER_ADDRESS``), else a ``LocalCluster`` on 127.0.0.1 is started for the
        run and stopped after it.
    n_workers
        Worker processes of the ``LocalCluster`` (default: Dask's choice, one per core with one
        thread each). Ignored with ``address``.
    threads_per_worker
        Threads per ``LocalCluster`` worker, i.e. how many nodes one worker runs at once.
    memory_limit
        Memory limit per ``LocalCluster`` worker (Dask syntax, e.g. ``"8GiB"``; ``"auto"`` splits
        the machine's memory between workers).
    dashboard_address
        Where the ``LocalCluster`` serves its dashboard (the plots need bokeh), e.g.
        ``"127.0.0.1:8787"``; default: a free port on 127.0.0.1, shown in the log.
    connect_timeout
        Seconds to wait for the scheduler at ``address`` to answer.
    is_async
        Load and save a node's datasets in threads (Kedro's ``--async``), on the worker.

    Examples
    --------
    ``kedro run --pipelines generation --runner cellsynth.runners.DaskRunner --runner-params n_workers=2``
    """

    def __init__(
        self,
        address: str | None = None,
        n_workers: int | None = None,
        threads_per_worker: int = 1,
        memory_limit: str | float | None = "auto",
        dashboard_address: str | None = None,
        connect_timeout: float = 30.0,
        is_async: bool = False,
    ) -> None:
        super().__init__(is_async=is_async)
        if n_workers is not None and int(n_workers) < 1:
            raise ValueError(f"DaskRunner: n_workers must be a positive integer, got {n_workers!r}")
        if int(threads_per_worker) < 1:
            raise ValueError(f"DaskRunner: threads_per_worker must be a positive integer, got {threads_per_worker!r}")
        self._address = str(address) if address else None
        self._n_workers = int(n_workers) if n_workers is not None else None
        self._threads_per_worker = int(threads_per_worker)
        self._memory_limit = memory_limit
        self._dashboard_address = dashboard_address
        self._connect_timeout = float(connect_timeout)
        #: One record per finished Dask task of the last run (which worker, when).
        self.task_records: list[TaskRecord] = []

    # -- AbstractRunner ---------------------------------------------------------------------
    def _get_executor(self, max_workers: int) -> None:  # the cluster is the executor
        return None

    def _run(
        self,
        pipeline: Pipeline,
        catalog: CatalogProtocol,
        hook_manager: PluginManager | None = None,
        run_id: str | None = None,
    ) -> None:
        """Submit the pipeline's nodes, co-located groups as one task each, respecting dependencies.

        Raises
        ------
        ValueError
            An in-memory pipeline input holds an ``AnnData`` (it would be pickled to a worker).
        NodeFailedError
            A node raised on a worker.
        RuntimeError
            The scheduler cannot be reached, or a task failed outside its nodes (e.g. the project
            is not importable on a worker, or a worker died).
        """
        import cloudpickle

        from cellsynth import tracking

        self.task_records = []
        self._refuse_in_memory_anndata_inputs(pipeline, catalog)
        self._warn_in_memory_outputs(pipeline, catalog)
        groups = co_located_groups(pipeline, catalog)
        spec = self._worker_spec()
        mlflow_context = tracking.run_context()

        with self._connect() as client:
            self._warm_up(client, spec, pipeline)
            futures: dict[Any, int] = {}
            done: set[int] = set()
            done_nodes: list[Node] = []
            todo = set(range(len(groups)))
            while todo or futures:
                ready = sorted(i for i in todo if groups[i].depends_on <= done)
                for i in ready:
                    todo.discard(i)
                    group = groups[i]
                    blob = cloudpickle.dumps(
                        (group.nodes, _task_catalog(group.nodes, catalog), mlflow_context, run_id, self._is_async)
                    )
                    key = f"{group.label}-{uuid.uuid4().hex[:8]}"
                    futures[client.submit(_execute_group, spec, blob, key=key, pure=False)] = i
                    self._logger.info("Submitted to Dask: %s", group.label)
                if not futures:
                    raise RuntimeError(f"DaskRunner: cannot schedule {sorted(groups[i].label for i in todo)}")
                finished = _wait_first(list(futures))
                for future in finished:
                    i = futures.pop(future)
                    try:
                        record = self._result(future, groups[i])
                    except Exception:
                        client.cancel(list(futures))
                        self._suggest_resume_scenario(pipeline, done_nodes, catalog)
                        raise
                    self.task_records.append(record)
                    done.add(i)
                    done_nodes.extend(groups[i].nodes)
                    self._logger.info(
                        "Completed %s on %s in %.1f s (%d of %d nodes)",
                        groups[i].label, record.worker, record.finished - record.started,
                        len(done_nodes), len(pipeline.nodes),
                    )

    # -- helpers ------------------------------------------------------------------------------
    def _warm_up(self, client: Client, spec: _WorkerSpec, pipeline: Pipeline) -> None:
        """Have every worker bootstrap the project and import the nodes' modules, all at once.

        Otherwise each worker pays for its imports (torch, scanpy: seconds) only when its first
        task arrives, one worker after the other. Fire and forget: a failure here surfaces in the
        first real task, with the node's name.
        """
        from distributed import fire_and_forget

        modules = sorted({getattr(n.func, "__module__", None) or "" for n in pipeline.nodes} - {""})
        for address in client.scheduler_info().get("workers", {}):
            fire_and_forget(client.submit(
                _warm_up_worker, spec, modules, key=f"cellsynth-warm-up-{uuid.uuid4().hex[:8]}", pure=False,
                workers=[address], allow_other_workers=False,
            ))

    @staticmethod
    def _result(future: Any, group: _Group) -> TaskRecord:
        try:
            return future.result()
        except NodeFailedError:
            raise
        except Exception as error:
            raise RuntimeError(
                f"Dask task for node(s) {group.label} failed outside the node: {type(error).__name__}: {error}. "
                "Is cellsynth installed in every worker's environment, and did a worker run out of memory?"
            ) from error

    @staticmethod
    def _refuse_in_memory_anndata_inputs(pipeline: Pipeline, catalog: CatalogProtocol) -> None:
        from anndata import AnnData

        offending = []
        for name in sorted(pipeline.inputs()):
            if _is_parameter(name) or not _is_in_memory(catalog, name):
                continue
            with contextlib.suppress(Exception):  # an empty MemoryDataset fails on its own, in the node
                if isinstance(catalog.load(name), AnnData):
                    offending.append(name)
        if offending:
            raise ValueError(
                f"DaskRunner: pipeline input(s) {offending} are in-memory AnnData objects; they would be pickled "
                "to the Dask workers. Save them to a file and declare them in the catalog (e.g. type "
                "cellsynth.datasets.AnnDataDataset with a filepath on the shared project folder)."
            )

    def _warn_in_memory_outputs(self, pipeline: Pipeline, catalog: CatalogProtocol) -> None:
        stranded = sorted(n for n in pipeline.outputs() if _is_in_memory(catalog, n))
        if stranded:
            self._logger.warning(
                "DaskRunner: output(s) %s are in memory; they stay on the worker that made them and are not "
                "returned. Declare a file dataset in the catalog to keep them.", stranded,
            )

    @staticmethod
    def _worker_spec() -> _WorkerSpec:
        from kedro.framework.project import LOGGING, PACKAGE_NAME

        environment = {
            name: value
            for name, value in os.environ.items()
            if name in FORWARDED_ENV_NAMES or name.startswith(FORWARDED_ENV_PREFIXES)
        }
        logging_config = dict(LOGGING) if PACKAGE_NAME else None  # type: ignore[arg-type]
        return _WorkerSpec(PACKAGE_NAME, logging_config, os.getcwd(), environment)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[Client]:
        import dask
        from distributed import Client, LocalCluster

        address = self._address or dask.config.get("scheduler-address", None)
        cluster = None
        if address:
            try:
                client = Client(address, timeout=self._connect_timeout)
            except (OSError, TimeoutError) as error:
                source = "address runner parameter" if self._address else "Dask setting scheduler-address"
                raise RuntimeError(
                    f"DaskRunner: no Dask scheduler answered at {address} (from the {source}) within "
                    f"{self._connect_timeout:g} s: {error}"
                ) from None
            if not client.scheduler_info().get("workers"):
                self._logger.warning("Dask scheduler %s has no workers yet; tasks wait until workers join.", address)
        else:
            cluster = LocalCluster(
                host="127.0.0.1",
                n_workers=self._n_workers,
                threads_per_worker=self._threads_per_worker,
                processes=True,
                memory_limit=self._memory_limit,
                dashboard_address=self._dashboard_address or "127.0.0.1:0",
            )
            try:
                client = Client(cluster)
            except BaseException:
                cluster.close()
                raise
        try:
            self._logger.info(
                "Dask scheduler %s with %d workers", client.scheduler.address, len(client.scheduler_info()["workers"])
            )
            yield client
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


def co_located_groups(pipeline: Pipeline, catalog: CatalogProtocol) -> list[_Group]:
    """Partition ``pipeline`` into tasks: nodes joined by an in-memory dataset share one task.

    Nodes that exchange a ``MemoryDataset`` (or any ephemeral dataset) are merged; if merging
    makes two groups depend on each other (A → memory → B with A → file → C → file → B), the
    groups on that cycle are merged too, so the task graph stays acyclic. Groups are returned in
    topological order, with ``depends_on`` the indices of the groups whose persisted outputs they read.
    """
    nodes = pipeline.nodes  # topologically sorted
    index = {node: i for i, node in enumerate(nodes)}
    parent = list(range(len(nodes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    producer = {out: index[n] for n in nodes for out in n.outputs}
    for node in nodes:
        for name in node.inputs:
            if name in producer and _is_in_memory(catalog, name):
                union(producer[name], index[node])

    # Merge cycles of the group graph until it is acyclic (each pass merges every cycle it finds).
    while True:
        edges = defaultdict(set)
        for node in nodes:
            for name in node.inputs:
                if name in producer and find(producer[name]) != find(index[node]):
                    edges[find(index[node])].add(find(producer[name]))
        cycles = [c for c in _strongly_connected(sorted({find(i) for i in range(len(nodes))}), edges) if len(c) > 1]
        if not cycles:
            break
        for cycle in cycles:
            for member in cycle[1:]:
                union(cycle[0], member)

    roots: dict[int, _Group] = {}
    for node in nodes:
        roots.setdefault(find(index[node]), _Group(nodes=[])).nodes.append(node)
    order = sorted(roots, key=lambda r: index[roots[r].nodes[0]])
    position = {root: k for k, root in enumerate(order)}
    groups = [roots[r] for r in order]
    for root in order:
        groups[position[root]].depends_on = {position[d] for d in edges.get(root, set())}
    # topological order of the groups (the first node's position is not enough once groups merged)
    return _toposort_groups(groups)


def _toposort_groups(groups: list[_Group]) -> list[_Group]:
    remaining = set(range(len(groups)))
    placed: list[int] = []
    while remaining:
        ready = sorted(i for i in remaining if groups[i].depends_on <= set(placed))
        if not ready:  # pragma: no cover - co_located_groups removes cycles
            raise RuntimeError("DaskRunner: cyclic task graph")
        placed.extend(ready)
        remaining -= set(ready)
    new_index = {old: new for new, old in enumerate(placed)}
    result = [groups[i] for i in placed]
    for group in result:
        group.depends_on = {new_index[d] for d in group.depends_on}
    return result


def _strongly_connected(vertices: Sequence[int], edges: Mapping[int, set[int]]) -> list[list[int]]:
    """Tarjan's strongly connected components (iterative)."""
    counter = 0
    low: dict[int, int] = {}
    order: dict[int, int] = {}
    stack: list[int] = []
    on_stack: set[int] = set()
    components: list[list[int]] = []
    for start in vertices:
        if start in order:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        order[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            vertex, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in order:
                    order[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[vertex] = min(low[vertex], order[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[vertex])
            if low[vertex] == order[vertex]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == vertex:
                        break
                components.append(sorted(component))
    return components


def _is_parameter(name: str) -> bool:
    return name == "parameters" or name.startswith("params:")


def _is_in_memory(catalog: CatalogProtocol, name: str) -> bool:
    if _is_parameter(name):
        return False
    dataset = catalog.get(name, fallback_to_runtime_pattern=True)
    return dataset is None or bool(getattr(dataset, "_EPHEMERAL", False))


def _task_catalog(nodes: Sequence[Node], catalog: CatalogProtocol) -> DataCatalog:
    """A catalog of just the datasets ``nodes`` load and save (parameters included)."""
    names = {name for node in nodes for name in (*node.inputs, *node.outputs)}
    datasets = {name: catalog.get(name, fallback_to_runtime_pattern=True) for name in sorted(names)}
    sub = DataCatalog(datasets={k: v for k, v in datasets.items() if v is not None})
    specs = getattr(catalog, "_validator_specs", None)  # declared dataset validators travel along
    if specs:
        sub._validator_specs = {k: v for k, v in specs.items() if k in names}
        sub.validation_enabled = getattr(catalog, "validation_enabled", True)
    return sub


def _wait_first(futures: list[Any]) -> set[Any]:
    from distributed import wait

    return set(wait(futures, return_when="FIRST_COMPLETED").done)


# -- worker side ----------------------------------------------------------------------------------
_hook_managers: dict[tuple[str | None, str], PluginManager] = {}


def _bootstrap(spec: _WorkerSpec) -> PluginManager:
    """Prepare this worker process for the project (once per package and working directory).

    Returns the hook manager with the project's hooks, as Kedro builds it for a subprocess.
    """
    from kedro.framework.hooks.manager import (
        _create_hook_manager,
        _register_hooks,
        _register_hooks_entry_points,
    )

    for name, value in spec.environment.items():
        os.environ.setdefault(name, value)
    key = (spec.package_name, spec.working_directory)
    if key in _hook_managers:
        return _hook_managers[key]
    if not os.path.isdir(spec.working_directory):
        raise FileNotFoundError(
            f"The driver's working directory {spec.working_directory} does not exist on this worker: the "
            "project folder (with data/) must be on a path shared by the driver and every worker."
        )
    os.chdir(spec.working_directory)  # the catalog's relative paths resolve against it
    if spec.package_name:
        from kedro.framework.project import configure_logging, configure_project

        configure_project(spec.package_name)
        if spec.logging_config:
            configure_logging(spec.logging_config)
    from kedro.framework.project import settings

    hook_manager = _create_hook_manager()
    _register_hooks(hook_manager, settings.HOOKS)
    _register_hooks_entry_points(hook_manager, settings.DISABLE_HOOKS_FOR_PLUGINS)
    _hook_managers[key] = hook_manager
    return hook_manager


def _warm_up_worker(spec: _WorkerSpec, modules: Sequence[str]) -> None:
    """Bootstrap and import ``modules`` ahead of the first task (errors are left to the tasks)."""
    import importlib

    try:
        _bootstrap(spec)
        for module in modules:
            importlib.import_module(module)
    except Exception:  # e.g. a module shipped by value: the task reports real problems itself
        log.debug("warm-up of %s failed", modules, exc_info=True)


def _execute_group(spec: _WorkerSpec, blob: bytes) -> TaskRecord:
    """Run one task's nodes in order on this worker (the function Dask executes)."""
    import cloudpickle
    from distributed import get_worker
    from kedro.runner.task import Task

    from cellsynth import tracking

    started = time.time()
    try:
        worker = get_worker().address
    except ValueError:  # not inside a worker (e.g. called directly)
        worker = "local"
    hook_manager = _bootstrap(spec)
    nodes, catalog, mlflow_context, run_id, is_async = cloudpickle.loads(blob)
    with tracking.attached_run(mlflow_context):
        for node in nodes:
            try:
                Task(node=node, catalog=catalog, is_async=is_async, hook_manager=hook_manager, run_id=run_id).execute()
            except Exception:
                raise NodeFailedError(node.name, worker, traceback.format_exc()) from None
    return TaskRecord(tuple(n.name for n in nodes), worker, os.getpid(), started, time.time())
