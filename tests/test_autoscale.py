"""Clusters that start from zero workers (issue 20): ``label`` and ``tune`` ask the autoscaler and wait.

* Fast, without Ray: ``runtime.wait_for_resources`` decides when to ask and wait, prints its progress lines and
  gives up after its timeout, on a fake clock; what label and tune wait for is what their planners accept.
* Slow, on Ray's own autoscaler with fake nodes (``fake_multinode`` provider: each "node" is a raylet the
  autoscaler starts on this machine): a head with 0 CPUs and one worker type of 2 CPUs (min 0, max 1). ``raygenre
  tune`` and ``raygenre label``, each on a fresh cluster, find no CPU, ask, wait for the worker and run to the
  end. (One cluster for both would not do: the worker stays up minutes after a run, kept by the requests of Ray
  Data's autoscaling coordinator, a detached actor that re-sends them until they expire, 180 s.)

The head runs under its own session (``ray start --block`` with ``start_new_session``) and is ended by that
session id: the fake nodes are started by the head's autoscaler (the monitor process), and their agents rename
themselves and outlive their raylet, so neither a command line nor a temp dir finds them.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import write_feature_table, write_tone_track
from test_cluster import (
    BIN,
    LOCAL,
    RAY,
    REPO,
    _end_session,
    _free_ports,
    _free_range,
    _ray_env,
    _session_pids,
    _short_root,
    _tail,
)
from test_listen import listening, not_loopback

from raygenre.config import LabelConfig, TuneConfig, load_config
from raygenre.label.pipeline import _pool_sizes, label_needs
from raygenre.runtime import ClusterTooSmallError, request_bundles, wait_for_resources
from raygenre.training.tune import plan_concurrency, trial_needs

RAYGENRE = str(BIN / "raygenre")


# ---------------------------------------------------------------------------------------- the decisions, no Ray
class FakeCluster:
    """A cluster whose CPUs appear ``grow_at`` seconds after the autoscaler is asked, on a fake clock."""

    def __init__(self, start: dict[str, float], grown: dict[str, float] | None, grow_at: float = 25.0) -> None:
        self.now, self.start, self.grown, self.grow_at = 0.0, start, grown, grow_at
        self.asked: list[list[dict[str, float]]] = []
        self.asked_at: float | None = None

    def resources(self) -> dict[str, float]:
        if self.grown is not None and self.asked_at is not None and self.now - self.asked_at >= self.grow_at:
            return dict(self.grown)
        return dict(self.start)

    def ask(self, bundles: list[dict[str, float]]) -> None:
        self.asked.append(bundles)
        if self.asked_at is None:
            self.asked_at = self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def wait(self, need: dict[str, float], timeout_s: float = 600.0, autoscale: bool = True,
             **kw: object) -> dict[str, float]:
        return wait_for_resources(need, timeout_s, "label", setting="label.wait_for_workers_s", autoscale=autoscale,
                                  resources=self.resources, ask=self.ask, clock=lambda: self.now, sleep=self.sleep,
                                  **kw)  # type: ignore[arg-type]


def test_enough_resources_means_no_request_and_no_wait(capsys: pytest.CaptureFixture[str]) -> None:
    cluster = FakeCluster({"CPU": 8.0}, None)
    assert cluster.wait({"CPU": 1.5}) == {"CPU": 8.0}
    assert cluster.asked == [] and cluster.now == 0 and capsys.readouterr().err == ""


def test_a_ray_this_process_started_is_never_waited_for(capsys: pytest.CaptureFixture[str]) -> None:
    """A local Ray (fixed CPUs, no autoscaler), or a wait of 0 s: the resources as they are, for the planner to
    refuse as before."""
    for kw in ({"autoscale": False}, {"timeout_s": 0.0}):
        cluster = FakeCluster({"CPU": 1.0}, {"CPU": 4.0})
        assert cluster.wait({"CPU": 1.5}, **kw) == {"CPU": 1.0}  # type: ignore[arg-type]
        assert cluster.asked == [] and cluster.now == 0
    assert capsys.readouterr().err == ""


def test_a_short_cluster_is_asked_and_waited_for(capsys: pytest.CaptureFixture[str]) -> None:
    cluster = FakeCluster({"CPU": 0.0}, {"CPU": 2.0}, grow_at=25.0)
    assert cluster.wait({"CPU": 1.26}, want={"CPU": 2.01}) == {"CPU": 2.0}
    # what it wants, in 1-CPU bundles (each must fit on one node), sent again every 5 s (Ray Data may replace it)
    assert cluster.asked == [[{"CPU": 1.0}] * 3] * 5
    assert 25 <= cluster.now <= 26
    lines = capsys.readouterr().err.splitlines()
    waiting = [ln for ln in lines if "waiting for the cluster to start workers" in ln]
    assert waiting[0] == ("label: waiting for the cluster to start workers: have 0 CPUs / need 1.26 CPUs "
                          "(autoscaler asked)")
    assert len(waiting) == 3  # at 0, 10 and 20 s
    assert lines[-1] == "label: the cluster has 2 CPUs: starting"


def test_the_wait_ends_with_one_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    cluster = FakeCluster({"CPU": 0.0, "GPU": 0.0}, None)
    with pytest.raises(ClusterTooSmallError, match=r"^label: the Ray cluster has 0 CPUs, 0 GPUs and did not reach "
                       r"the 1.5 CPUs, 1 GPU needed within 60 s .* Raise label.wait_for_workers_s") as err:
        cluster.wait({"CPU": 1.5, "GPU": 1.0}, timeout_s=60.0)
    assert isinstance(err.value, ValueError)  # the CLI turns it into one line and exit 2
    assert "\n" not in str(err.value)
    assert cluster.asked[0] == [{"GPU": 1.0}, {"CPU": 1.0}, {"CPU": 1.0}] and 60 <= cluster.now <= 61
    assert len(capsys.readouterr().err.splitlines()) == 6  # a line every 10 s


def test_bundles_round_up() -> None:
    assert request_bundles({"CPU": 1.5}) == [{"CPU": 1.0}] * 2
    assert request_bundles({"CPU": 2.0, "GPU": 0.5}) == [{"GPU": 1.0}, {"CPU": 1.0}, {"CPU": 1.0}]
    assert request_bundles({}) == []


@pytest.mark.parametrize("over", [{}, {"actors": 3}, {"gpu": True}, {"gpu": True, "actors": 2}])
def test_label_waits_for_what_its_pool_accepts(over: dict[str, object]) -> None:
    cfg = load_config(LabelConfig, overrides=over)
    need = label_needs(cfg)
    actors = _pool_sizes(cfg, need)[0]  # exactly the need: planned, not refused
    assert actors == (cfg.actors or 1)
    assert need.get("GPU", 0) == (actors if cfg.gpu else 0)
    with pytest.raises(ValueError, match="no CPU for decoding"):
        _pool_sizes(cfg, {**need, "CPU": need["CPU"] - 0.5})  # any less is refused


@pytest.mark.parametrize("over", [{}, {"workers_per_trial": 2}, {"gpus_per_trial": 0.5}, {"max_concurrent": 3},
                                  {"gpus_per_trial": 2}])
def test_tune_waits_for_what_its_plan_accepts(over: dict[str, object]) -> None:
    cfg = load_config(TuneConfig, overrides=over)
    least, wanted = trial_needs(cfg)
    assert plan_concurrency({**least, "CPU": float(int(least["CPU"]) + 1)}, cfg)[0] >= 1  # whole CPUs, as nodes
    assert plan_concurrency(wanted, cfg)[0] >= 1
    assert all(wanted[k] >= least[k] for k in least)
    with pytest.raises(ValueError, match="tune needs at least|but the Ray cluster has"):
        plan_concurrency({**least, "CPU": least["CPU"] - 0.25}, cfg)


def test_the_wait_is_a_config_setting() -> None:
    assert load_config(LabelConfig).wait_for_workers_s == 600
    assert load_config(TuneConfig).wait_for_workers_s == 600
    assert load_config(TuneConfig, overrides={"wait_for_workers_s": 0}).wait_for_workers_s == 0


# ------------------------------------------------------------------------------ a real autoscaler, fake nodes
WORKER = "ray.worker.cpu"


def autoscaling_config(gcs_port: int) -> dict[str, object]:
    """The ``fake_multinode`` cluster: a 0-CPU head, one worker type of 2 CPUs (min 0, max 1), idle after 6 s.

    Ray's ``fake_multi_node/example.yaml`` has every key (the wheel does not ship it); ``gcs_address`` points
    the fake nodes at this head (the default is port 6379 on the node's address). Autoscaler v1 only: v2
    (KubeRay's default with Ray 2.60, ``RAY_enable_autoscaler_v2=1``) reads that example.yaml for its defaults, and
    its monitor exits at once without it (measured).
    """
    provider = {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                "disable_launch_config_check": True, "gcs_address": f"{LOCAL}:{gcs_port}"}
    return {
        "cluster_name": "raygenre-fake", "max_workers": 1, "upscaling_speed": 1.0, "idle_timeout_minutes": 0.1,
        "provider": provider,
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            WORKER: {"resources": {"CPU": 2, "object_store_memory": 200 * 1024**2}, "node_config": {},
                     "min_workers": 0, "max_workers": 1},
        },
        "head_node_type": "ray.head.default", "auth": {}, "docker": {}, "initialization_commands": [],
        "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [], "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
    }


@dataclass
class FakeHead:
    proc: subprocess.Popen
    address: str  # 127.0.0.1:GCS_PORT
    env: dict[str, str]  # for drivers: the head's token, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, its temp dir
    root: Path
    log: Path


def raylets(head: FakeHead) -> int:
    """Raylets alive in the head's session: the head's own, plus one per fake worker node."""
    count = 0
    for pid in _session_pids(head.proc.pid):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "raylet":
                count += 1
        except OSError:
            continue
    return count


@pytest.fixture
def fake_head(tmp_path: Path) -> Iterator[FakeHead]:
    """A fresh fake autoscaling cluster (``autoscaling_config``) with token auth, on 127.0.0.1 only."""
    root = _short_root(tmp_path)
    gcs, dash, client, agent, agent_grpc, env_agent, metrics, node_mgr, obj_mgr = _free_ports(9)
    lo, hi = _free_range(100)
    env = _ray_env(root, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_ADDRESS=f"{LOCAL}:{gcs}")
    config = root / "autoscaling.yaml"
    config.write_text(json.dumps(autoscaling_config(gcs)))  # JSON is YAML
    head_env = {**env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    cmd = [RAY, "start", "--head", "--block", "--num-cpus", "0", "--autoscaling-config", str(config),
           "--node-ip-address", LOCAL, "--dashboard-host", LOCAL, "--include-dashboard", "true", "--port", str(gcs),
           "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
           "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
           "--runtime-env-agent-port", str(env_agent), "--metrics-export-port", str(metrics),
           "--node-manager-port", str(node_mgr), "--object-manager-port", str(obj_mgr), "--min-worker-port", str(lo),
           "--max-worker-port", str(hi), "--object-store-memory", str(200 * 1024**2), "--temp-dir",
           str(root / "ray"), "--disable-usage-stats"]
    log = root / "head.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=head_env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    head = FakeHead(proc, f"{LOCAL}:{gcs}", env, root, log)
    try:
        deadline = time.monotonic() + 180
        while not (log.read_text(errors="replace").count("Ray runtime started") and raylets(head) == 1):
            assert proc.poll() is None, f"ray start exited with {proc.returncode}:\n{_tail(log.read_text())}"
            assert time.monotonic() < deadline, f"the head never came up:\n{_tail(log.read_text())}"
            time.sleep(1)
        yield head
    finally:
        _end_session(proc)


def _raygenre(head: FakeHead, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """One ``raygenre`` CLI run as a driver of the fake cluster (in the head's environment: token, loopback).

    The driver runs in its own session and is ended with it whatever happens: when the head dies (the driver
    would retry its GCS for minutes) the test fails at once, with the head's log.
    """
    name = f"{args[0]}-{time.monotonic_ns()}"
    out_path, err_path = head.root / f"{name}.out", head.root / f"{name}.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen([RAYGENRE, *args, "--address", head.address], env=head.env, cwd=REPO, stdout=out,
                                stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            assert head.proc.poll() is None, f"the head died:\n{_tail(head.log.read_text(errors='replace'))}"
            assert time.monotonic() < deadline, f"raygenre {args[0]} took over {timeout:.0f} s:\n" \
                f"{_tail(err_path.read_text(errors='replace'))}"
            time.sleep(1)
    finally:
        _end_session(proc, grace=10)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out_path.read_text(errors="replace"),
                                       err_path.read_text(errors="replace"))


@pytest.mark.slow
def test_tune_waits_for_the_autoscaler_and_finishes(fake_head: FakeHead, tmp_path: Path, ray_local: None) -> None:
    feats = tmp_path / "features"
    write_feature_table(feats)  # on the session's local Ray; the fake cluster's nodes read it from the same disk
    assert raylets(fake_head) == 1  # the head alone: no CPU at all
    out = fake_head.root / "tune"
    t0 = time.monotonic()
    run = _raygenre(fake_head, "tune", "--features", str(feats), "--out", str(out), "--models", "ann",
                    "--num-samples", "1", "--max-epochs", "1", "--no-set-default")
    seconds = time.monotonic() - t0
    logs = f"{_tail(run.stdout)}\n{_tail(run.stderr)}\nhead:\n{_tail(fake_head.log.read_text(errors='replace'))}"
    assert run.returncode == 0, logs
    assert "tune: waiting for the cluster to start workers: have 0 CPUs / need 1.26 CPUs (autoscaler asked)" \
        in run.stderr, logs
    assert "tune: the cluster has 2 CPUs: starting" in run.stderr, logs
    assert (out / "models" / "ann" / "model.json").is_file() and (out / "tune.json").is_file(), logs
    summary = json.loads((out / "tune.json").read_text())
    assert summary["best_model"] == "ann" and summary["best"]["ann"]["epochs"] == 1
    print(f"fake autoscaler: tune {seconds:.0f} s")


@pytest.mark.slow
def test_label_waits_for_the_autoscaler_and_finishes(fake_head: FakeHead, tmp_path: Path) -> None:
    from test_label import random_model  # torch: only for this test

    model = random_model(tmp_path / "model")
    lib = fake_head.root / "lib"
    files = sorted(str(lib / f"artist{i % 2}" / f"track{i}.wav") for i in range(4))
    for i, path in enumerate(files):
        write_tone_track(Path(path), 4.0, seed=i)
    assert raylets(fake_head) == 1  # the head alone: no CPU at all
    labels = fake_head.root / "labels.parquet"
    t0 = time.monotonic()
    run = _raygenre(fake_head, "label", str(lib), "--model", model, "--out", str(labels))
    seconds = time.monotonic() - t0
    logs = f"{_tail(run.stdout)}\n{_tail(run.stderr)}\nhead:\n{_tail(fake_head.log.read_text(errors='replace'))}"
    assert run.returncode == 0, logs
    assert "label: waiting for the cluster to start workers: have 0 CPUs / need 1.5 CPUs (autoscaler asked)" \
        in run.stderr, logs
    table = pq.read_table(labels)
    assert sorted(table.column("path").to_pylist()) == files, logs  # one row per file
    assert not any(table.column("error").to_pylist()), logs
    assert raylets(fake_head) == 2  # the worker node is still up (Ray Data's requests keep it for minutes)
    sockets = listening(set(_session_pids(fake_head.proc.pid)))  # the head, the fake node and their workers
    assert len({s[3] for s in sockets}) >= 10, sockets
    assert not not_loopback(sockets), "listening beyond loopback:\n" + "\n".join(not_loopback(sockets))

    # --gpu on a cluster whose only worker type has no GPU: asked, waited for, then one line and exit 2
    (tmp_path / "label.yaml").write_text("wait_for_workers_s: 5\n")
    gpu = _raygenre(fake_head, "label", str(lib), "--gpu", "--model", model, "--config",
                    str(tmp_path / "label.yaml"), "--out", str(fake_head.root / "gpu.parquet"))
    assert gpu.returncode == 2, _tail(gpu.stdout + gpu.stderr)
    assert "did not reach the 1.5 CPUs, 1 GPU needed within 5 s" in gpu.stderr, gpu.stderr
    assert "label.wait_for_workers_s" in gpu.stderr and "Traceback" not in gpu.stderr, gpu.stderr
    assert not (fake_head.root / "gpu.parquet").exists()
    print(f"fake autoscaler: label {seconds:.0f} s")
