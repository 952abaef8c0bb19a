"""Real Ray clusters on this machine, bound to 127.0.0.1 and ended by pid:

* ``ray job submit`` (token auth, ``jobs/runtime-env/image.yaml``) to a ``ray start --head`` node: train, then
  label with the trained model; and a job that fails is reported FAILED with its error in the logs.
* a multi-node cluster (``ray.cluster_utils.Cluster``: three 1-CPU nodes): Ray Train workers on two nodes,
  label tasks on several; then a node that hosts a training worker is removed mid-training and training
  resumes from its last checkpoint on a fresh node.

The multi-node runs happen in a child process (this file run as a script, see ``_child``): the session's
``ray_local`` runtime stays connected in the pytest process, and a driver can be connected to one cluster
only. Every Ray process started here gets its own ``RAY_TMPDIR``/``--temp-dir`` (``ray_current_cluster``,
which Ray's State API falls back on, is per temp dir) and ``RAY_ADDRESS``, so nothing here is mistaken for
another runtime on the machine. ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray resolve "this node" to
127.0.0.1: without it Ray 2.60 on Linux replaces 127.0.0.1 (``--node-ip-address``, ``ray.init(address=)``)
with the host's outward address, and the GCS, raylets, agents and workers listen on every interface even with
``--node-ip-address 127.0.0.1``. Every head started here is checked: each socket its processes listen on is on
127.0.0.1 (``test_listen.listening``: ``/proc/<pid>/fd`` + ``/proc/net/tcp*``).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest
from test_listen import descendants, listening, not_loopback

REPO = Path(__file__).resolve().parent.parent
LOCAL = "127.0.0.1"
BIN = Path(sys.executable).parent  # the venv's bin: python, ray, raygenre
RAY = str(BIN / "ray")
GENRES = ("blues", "classical", "jazz", "metal")


# ------------------------------------------------------------------------------------------ ports and processes
def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((LOCAL, port))
        except OSError:
            return False
    return True


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now (the OS picks them)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((LOCAL, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _free_range(size: int = 100) -> tuple[int, int]:
    """A block of ``size`` consecutive free ports below Linux's ephemeral range (for worker ports)."""
    for _ in range(100):
        lo = random.randrange(20000, 32000 - size)
        if all(_bindable(p) for p in range(lo, lo + size)):
            return lo, lo + size - 1
    raise RuntimeError("no free block of worker ports")


def _session_pids(sid: int) -> list[int]:
    """Live processes of session ``sid`` (the pid of a process started with ``start_new_session``)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state ppid pgrp session ...
        if fields[0] != "Z" and int(fields[3]) == sid:
            pids.append(int(entry))
    return pids


def _end_session(proc: subprocess.Popen, grace: float = 60.0) -> None:
    """SIGTERM the session leader ``proc`` (``ray start --block`` then stops its node), wait, then SIGKILL
    whatever is left of ITS session: Ray workers leave the leader's process group but not its session."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    deadline = time.monotonic() + 30
    while (pids := _session_pids(proc.pid)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    assert not _session_pids(proc.pid), f"processes of session {proc.pid} survived SIGKILL"


def _ray_env(root: Path, **extra: str) -> dict[str, str]:
    """Environment for Ray processes started by a test: its own temp dir and workspace, the venv first on PATH."""
    env = dict(os.environ)
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(var, None)
    (root / "tmp" / "ray").mkdir(parents=True, exist_ok=True)  # Ray writes ray_current_cluster there
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", RAY_TMPDIR=str(root / "tmp"),
               RAYGENRE_HOME=str(root / "raygenre-home"), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1",
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",  # SIGTERM stops `ray start --block` at once, no drain
               **extra)
    return env


def _short_root(tmp_path: Path) -> Path:
    """A short folder under /tmp (Ray's unix sockets live under it; their paths must stay < 107 characters),
    linked from ``tmp_path`` so pytest's tmp folder shows where it went."""
    root = Path(tempfile.mkdtemp(prefix="rg", dir="/tmp"))
    with contextlib.suppress(OSError):
        (tmp_path / "ray-root").symlink_to(root)
    return root


def _tail(text: str, n: int = 6000) -> str:
    return text[-n:]


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> str:
    """4 genres x (2 train, 1 val, 1 test tracks) x 2 segments: 32 segments (written on the session's Ray)."""
    from conftest import write_feature_table

    out = tmp_path_factory.mktemp("cluster-features") / "table"
    write_feature_table(out, GENRES, tracks={"train": 2, "val": 1, "test": 1}, segments=2)
    return str(out)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Six 4-second WAV files in nested folders."""
    from conftest import write_tone_track

    root = tmp_path_factory.mktemp("cluster-library") / "library"
    paths = []
    for i in range(6):
        path = root / f"artist{i % 2}" / f"album{i % 3}" / f"track{i}.wav"
        write_tone_track(path, 4.0, seed=i)
        paths.append(str(path))
    return paths


@dataclass
class Head:
    """A ``ray start --head --block`` node with token auth and the Jobs API on ``dashboard``."""

    proc: subprocess.Popen
    dashboard: str  # http://127.0.0.1:PORT
    env: dict[str, str]  # for the `ray job` CLI: RAY_AUTH_MODE=token + the token
    root: Path
    log: Path


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Head]:
    root = _short_root(tmp_path_factory.mktemp("head"))
    gcs, dash, client, agent, agent_grpc, env_agent, metrics, node_mgr, obj_mgr = _free_ports(9)
    lo, hi = _free_range(100)
    env = _ray_env(root, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_ADDRESS=f"{LOCAL}:{gcs}")
    cmd = [RAY, "start", "--head", "--block", "--node-ip-address", LOCAL, "--dashboard-host", LOCAL,
           "--include-dashboard", "true", "--port", str(gcs), "--dashboard-port", str(dash),
           "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent),
           "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(env_agent),
           "--metrics-export-port", str(metrics), "--node-manager-port", str(node_mgr),
           "--object-manager-port", str(obj_mgr), "--min-worker-port", str(lo), "--max-worker-port", str(hi),
           "--num-cpus", "2", "--object-store-memory", str(300 * 1024**2), "--temp-dir", str(root / "ray"),
           "--disable-usage-stats"]
    log = root / "head.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    node = Head(proc, f"http://{LOCAL}:{dash}", env, root, log)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, f"ray start exited with {proc.returncode}:\n{_tail(log.read_text())}"
            if _ray_job(node, "list", timeout=60).returncode == 0:
                break
            assert time.monotonic() < deadline, f"the Jobs API never came up:\n{_tail(log.read_text())}"
            time.sleep(2)
        yield node
    finally:
        _end_session(proc)


# ------------------------------------------------------------------------------------------------ ray job CLI
def _ray_job(head: Head, *args: str, entrypoint: list[str] | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [RAY, "job", *args, "--address", head.dashboard] + (["--", *entrypoint] if entrypoint else [])
    return subprocess.run(cmd, env=head.env, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _submit(head: Head, name: str, entrypoint: list[str],
            timeout: float = 700) -> tuple[str, subprocess.CompletedProcess]:
    """``ray job submit`` from the repo root with the image runtime env; blocks until the job ends."""
    job_id = f"rg-{name}-{uuid.uuid4().hex[:8]}"
    out = _ray_job(head, "submit", "--submission-id", job_id, "--runtime-env", "jobs/runtime-env/image.yaml",
                   "--working-dir", str(REPO), entrypoint=entrypoint, timeout=timeout)
    return job_id, out


def _status(head: Head, job_id: str) -> str:
    """``ray job status``: SUCCEEDED / FAILED / STOPPED / PENDING / RUNNING."""
    out = _ray_job(head, "status", job_id)
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)
    final = {"succeeded": "SUCCEEDED", "failed": "FAILED", "was stopped": "STOPPED"}
    if found := re.search(rf"Job '{re.escape(job_id)}' (succeeded|failed|was stopped)", text):
        return final[found.group(1)]
    found = re.search(rf"Status for job '{re.escape(job_id)}': (\w+)", text)
    assert found, f"no status in:\n{text}"
    return found.group(1)


def _logs(head: Head, job_id: str) -> str:
    out = _ray_job(head, "logs", job_id)
    assert out.returncode == 0, out.stderr
    return out.stdout


# ------------------------------------------------------------------------------------------------ job tests
@pytest.mark.slow
def test_head_listens_on_loopback_only(head: Head) -> None:
    """The ``ray start --head`` node, with a submitted job's detached actor alive (a worker): every GCS, raylet,
    dashboard, agent, client server and worker socket is on 127.0.0.1."""
    code = ("import ray, time; ray.init(); A = ray.remote(num_cpus=0)(type('Probe', (), {'ping': lambda s: 1})); "
            "a = A.options(name='listen-probe', lifetime='detached').remote(); ray.get(a.ping.remote())")
    job_id, sub = _submit(head, "listen", ["python", "-c", code], timeout=300)
    assert sub.returncode == 0, _tail(sub.stdout + sub.stderr)
    pids = set(_session_pids(head.proc.pid)) | descendants(head.proc.pid)
    sockets = listening(pids)
    ports = {port for _, _, _, port in sockets}
    gcs = int(head.env["RAY_ADDRESS"].rsplit(":", 1)[1])
    dashboard = int(head.dashboard.rsplit(":", 1)[1])
    assert {gcs, dashboard} <= ports, sockets  # the helper sees this head's processes
    assert not not_loopback(sockets), "listening beyond loopback:\n" + "\n".join(not_loopback(sockets))


@pytest.mark.slow
def test_job_submit_trains_then_labels_and_logs_show_progress(head: Head, table: str, library: list[str],
                                                                 tmp_path: Path) -> None:
    import raygenre

    model_dir = tmp_path / "model"
    model_uri = model_dir.as_uri()  # file:///...: the URI path (runs go to file:///.../runs)
    job_id, sub = _submit(head, "train", ["raygenre", "train", "--model", "ann", "--features", table,
                                          "--out", model_uri, "--epochs", "2", "--workers", "1", "--lr", "1e-3",
                                          "--batch-size", "16"])
    assert sub.returncode == 0, f"train job failed:\n{_tail(sub.stdout + sub.stderr)}"
    assert _status(head, job_id) == "SUCCEEDED"

    model = raygenre.load_model(str(model_dir))
    assert model.name == "ann" and list(model.genres) == list(GENRES)
    assert (tmp_path / "runs").is_dir() and any((tmp_path / "runs").glob("train-ann-*/history.json"))

    logs = _logs(head, job_id)
    for epoch in (1, 2):
        assert re.search(rf"epoch\s+{epoch}\s+train loss \d+\.\d+ acc \d\.\d+\s+val loss \d+\.\d+", logs), logs
    assert re.search(r"test: segment accuracy \d+\.\d%, track accuracy \d+\.\d%, macro F1 \d\.\d+", logs), logs
    assert "best epoch" in logs

    labels = tmp_path / "labels.csv"
    job_id, sub = _submit(head, "label", ["raygenre", "label", str(Path(library[0]).parents[2]),
                                          "--model", model_uri, "--out", str(labels)])
    assert sub.returncode == 0, f"label job failed:\n{_tail(sub.stdout + sub.stderr)}"
    assert _status(head, job_id) == "SUCCEEDED"
    with open(labels, newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["path"] for r in rows) == sorted(library)  # one row per file
    assert all(r["top_genre"] in GENRES and not r["error"] for r in rows), rows
    assert all(abs(sum(float(r[f"p_{g}"]) for g in GENRES) - 1) < 1e-3 for r in rows)
    assert "Labelled 6 files" in _logs(head, job_id)


@pytest.mark.slow
def test_job_submit_writes_to_s3_as_the_k8s_jobs_do(head: Head, table: str, s3: str) -> None:
    """A submitted train job whose --out is an s3:// URI on the moto endpoint (the head inherited the AWS
    variables, as KubeRay pods get them from a secret); the model is read back from the bucket."""
    import raygenre

    model_uri = f"{s3}/model"
    job_id, sub = _submit(head, "s3", ["raygenre", "train", "--model", "ann", "--features", table, "--out",
                                       model_uri, "--epochs", "1", "--min-epochs", "1", "--workers", "1",
                                       "--no-set-default"])
    assert sub.returncode == 0, f"train job failed:\n{_tail(sub.stdout + sub.stderr)}"
    assert _status(head, job_id) == "SUCCEEDED"
    model = raygenre.load_model(model_uri)
    assert model.name == "ann" and list(model.genres) == list(GENRES)
    from raygenre import storage

    fs, inner = storage.resolve(f"{s3}/runs")
    runs = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    assert any(i.path.endswith("/history.json") for i in runs)  # Ray Train's run folder went to S3 too


@pytest.mark.slow
def test_job_submit_reports_a_failing_job_as_failed(head: Head, tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent-features"
    job_id, sub = _submit(head, "fail", ["raygenre", "train", "--model", "ann", "--features", str(missing),
                                         "--out", str(tmp_path / "model"), "--epochs", "1", "--workers", "1"],
                          timeout=300)
    assert sub.returncode != 0, sub.stdout
    assert "failed" in (sub.stdout + sub.stderr).lower()
    assert _status(head, job_id) == "FAILED"
    logs = _logs(head, job_id)
    assert "error:" in logs and "is not a finished feature table" in logs and str(missing) in logs, logs
    assert not (tmp_path / "model").exists()


# ---------------------------------------------------------------------------------------------- multi-node
def _run_child(scenario: str, args: dict[str, Any], tmp_path: Path, timeout: float = 780) -> dict[str, Any]:
    """Run ``_child(scenario)`` in a fresh process (own session, own Ray temp dir); return its JSON report."""
    root = _short_root(tmp_path)
    gcs, dash, agent = _free_ports(3)
    report = root / "report.json"
    args = {**args, "root": str(root), "gcs_port": gcs, "dashboard_port": dash, "agent_port": agent,
            "report": str(report)}
    env = _ray_env(root, RAY_ADDRESS=f"{LOCAL}:{gcs}")
    log = root / "child.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, __file__, scenario, json.dumps(args)], env=env, cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{scenario} did not finish in {timeout:.0f} s:\n{_tail(log.read_text(errors='replace'))}")
    finally:
        _end_session(proc, grace=30)
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, f"{scenario} exited with {proc.returncode}:\n{_tail(text)}"
    rep = json.loads(report.read_text())
    sockets = [tuple(s) for s in rep["listening"]]
    assert gcs in {s[3] for s in sockets}, sockets  # the child saw its cluster's GCS
    assert not not_loopback(sockets), "listening beyond loopback:\n" + "\n".join(not_loopback(sockets))
    return rep


@pytest.mark.slow
def test_multi_node_training_and_labelling_use_several_nodes(table: str, library: list[str],
                                                              tmp_path: Path) -> None:
    rep = _run_child("placement", {"table": table, "library": str(Path(library[0]).parents[2])}, tmp_path)
    nodes = set(rep["nodes"])
    assert len(nodes) == 3
    # 3 nodes x 1 CPU: each of the 2 workers takes 1 CPU (train.cpus_per_worker), so they are on 2 nodes
    assert len(rep["train_worker_nodes"]) == 2 and set(rep["train_worker_nodes"]) <= nodes, rep
    assert [r["epoch"] for r in rep["history"]] == [1, 2] and rep["resumed_from"] == []
    assert rep["label_files"] == len(library) and rep["label_errors"] == 0
    assert len(set(rep["label_nodes"])) >= 2 and set(rep["label_nodes"]) <= nodes, rep


@pytest.mark.slow
def test_training_survives_losing_a_node_and_resumes_from_its_checkpoint(table: str, tmp_path: Path) -> None:
    rep = _run_child("node_loss", {"table": table}, tmp_path)
    assert rep["error"] is None, rep["error"]
    assert rep["removed_node"] in rep["train_worker_nodes_before"]
    assert rep["removed_node"] not in rep["nodes_after"]
    epochs = rep["epochs"]
    assert [r["epoch"] for r in rep["history"]] == list(range(1, epochs + 1))  # every epoch exactly once
    # resumed from the last checkpoint it had committed when the node went (at least the epoch seen then)
    assert rep["resumed_from"] and rep["seen_before_removal"] <= rep["resumed_from"][0] < epochs, rep
    assert any(m.get("resumed_from_epoch") for m in rep["progress"]), rep["progress"]
    assert rep["model_loads"]


# ----------------------------------------------------------------------------------------- the child process
def _cluster(args: dict[str, Any]) -> Any:
    """Three 1-CPU nodes on 127.0.0.1: a head (dashboard: the State API) and two workers."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "node_ip_address": LOCAL, "gcs_server_port": args["gcs_port"], "include_dashboard": True,
        "dashboard_host": LOCAL, "dashboard_port": args["dashboard_port"],
        "dashboard_agent_listen_port": args["agent_port"], "temp_dir": str(Path(args["root"]) / "ray")})
    for _ in range(2):
        cluster.add_node(num_cpus=1, node_ip_address=LOCAL)
    cluster.wait_for_nodes()
    return cluster


def _train_cfg(**over: Any) -> Any:
    from raygenre.config import TrainConfig, load_config

    return load_config(TrainConfig, overrides={"model": "ann", "workers": 2, "lr": 1e-3, "batch_size": 16,
                                           "patience": 100, "max_failures": 2, "seed": 0, **over})


def _worker_nodes(alive_only: bool = False) -> list[str]:
    from ray.util.state import list_actors

    filters: list[Any] = [("class_name", "=", "RayTrainWorker")]
    if alive_only:
        filters.append(("state", "=", "ALIVE"))
    return sorted({a.node_id for a in list_actors(filters=filters, detail=True, limit=1000)})


def _child_placement(args: dict[str, Any], cluster: Any) -> dict[str, Any]:
    import ray
    from ray.util.state import list_actors, list_tasks

    from raygenre.config import LabelConfig, load_config
    from raygenre.label.pipeline import label_library
    from raygenre.training.train import train

    root = Path(args["root"])
    result = train(args["table"], _train_cfg(epochs=2), str(root / "model"), storage_path=str(root / "runs"))
    workers = _worker_nodes()
    labels = label_library(args["library"], str(root / "labels.parquet"), load_config(LabelConfig),
                           model_dir=str(root / "model"), progress=False)
    label_nodes: set[str] = set()
    deadline = time.monotonic() + 60  # task events reach the GCS within a second or so
    while time.monotonic() < deadline:
        tasks = list_tasks(detail=True, limit=10000)
        label_nodes = {t.node_id for t in tasks if t.node_id and ("ScanLibrary" in t.name or "decode_batch" in t.name)}
        actors = list_actors(detail=True, limit=1000)
        label_nodes |= {a.node_id for a in actors if "Predictor" in (a.class_name or "")}
        if len(label_nodes) >= 2:
            break
        time.sleep(2)
    return {"nodes": [n["NodeID"] for n in ray.nodes() if n["Alive"]], "train_worker_nodes": workers,
            "history": result.history, "resumed_from": result.resumed_from, "label_files": labels.files,
            "label_errors": labels.errors, "label_nodes": sorted(label_nodes)}


def _child_node_loss(args: dict[str, Any], cluster: Any) -> dict[str, Any]:
    import ray

    import raygenre
    from raygenre.training.train import train

    root = Path(args["root"])
    epochs = 8  # margin: the node must go while training still runs
    progress: list[dict[str, Any]] = []
    first_epoch = threading.Event()
    outcome: dict[str, Any] = {}

    def on_epoch(m: dict[str, Any]) -> None:
        progress.append(m)
        first_epoch.set()

    def run() -> None:
        try:
            outcome["result"] = train(args["table"], _train_cfg(epochs=epochs), str(root / "model"),
                                      storage_path=str(root / "runs"), progress_callback=on_epoch)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            outcome["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    # Once an epoch is reported its checkpoint is committed (Ray Train registers checkpoints before it calls
    # user callbacks): then take away a worker node that hosts a training worker.
    assert first_epoch.wait(600), "no epoch finished"
    seen = max(m["epoch"] for m in progress)
    before = _worker_nodes(alive_only=True)
    victim = next(n for n in cluster.worker_nodes if n.node_id in before)
    print(f"after epoch {seen}: removing node {victim.node_id} (training workers on {before})", flush=True)
    cluster.remove_node(victim, allow_graceful=False)
    cluster.add_node(num_cpus=1, node_ip_address=LOCAL)  # room for 2 workers again
    thread.join(600)
    assert not thread.is_alive(), "training did not finish after the node was replaced"
    result = outcome.get("result")
    loads = False
    if result is not None:
        loads = raygenre.load_model(result.model_dir).name == "ann"
    return {"error": outcome.get("error"), "epochs": epochs, "seen_before_removal": seen,
            "removed_node": victim.node_id, "train_worker_nodes_before": before,
            "nodes_after": [n["NodeID"] for n in ray.nodes() if n["Alive"]],
            "history": result.history if result else [], "resumed_from": result.resumed_from if result else [],
            "progress": progress, "model_loads": loads}


def _child(scenario: str, args: dict[str, Any]) -> None:
    import ray

    cluster = _cluster(args)
    try:
        ray.init(address=cluster.address)
        report = {"placement": _child_placement, "node_loss": _child_node_loss}[scenario](args, cluster)
        # every node of the cluster (head, workers, their agents and workers) and this driver: loopback only
        report["listening"] = listening(descendants(os.getpid()))
        Path(args["report"]).write_text(json.dumps(report, default=str))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    _child(sys.argv[1], json.loads(sys.argv[2]))
