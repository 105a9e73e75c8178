"""A real two-node Ray cluster on this machine, used as a user would: `ray start` a head (custom
resource `trainer_pool`) and a second raylet (`rollout_pool`), then `ray job submit` the shipped
recipe recipes/grpo_two_node.yaml (tiny sizes) with the working directory as runtime_env.

- The pinned job succeeds, and its run directory's placement.json (written by the driver from
  where each actor reports it runs) puts the trainer on the head and the engines on the worker.
- A job asking for resources the cluster lacks fails before any actor starts, naming them.
- Fault: the worker's raylet is SIGKILLed mid-run; the job fails within a bounded time saying
  the node died, the last checkpoint is intact, and the run resumes once a worker is back.

The cluster uses its own temp dir and ports, and is stopped by killing exactly the processes
whose command line names that temp dir (and their children): `ray stop` would stop every Ray on
the machine, other engineers' too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")

pytestmark = pytest.mark.slow


def distinct_free_ports(count: int, avoid: set[int] = frozenset()) -> list[int]:
    """`count` different ports that are free now (all bound at once, so none repeats)."""
    sockets, ports = [], []
    try:
        while len(ports) < count:
            sock = socket.socket()
            sock.bind(("", 0))
            sockets.append(sock)
            if sock.getsockname()[1] not in avoid:
                ports.append(sock.getsockname()[1])
    finally:
        for sock in sockets:
            sock.close()
    return ports


class TwoNodeCluster:
    """A head and one worker raylet on 127.0.0.1, each with 1 CPU and one custom resource."""

    def __init__(self) -> None:
        # Short: Ray's Unix socket paths live under it and must stay under ~100 characters.
        self.temp_dir = tempfile.mkdtemp(prefix="rlp-ray-", dir="/tmp")
        self.port, self.dashboard_port, self.client_port, self.head_node_port = distinct_free_ports(4)
        self.workers_started = 0
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env["RAY_USAGE_STATS_ENABLED"] = "0"
        # Ray 2.60's `ray start --head` turns token auth on by itself when ~/.ray/auth_token exists,
        # but a joining `ray start` does not: say the mode explicitly (a 127.0.0.1-only test cluster).
        self.env["RAY_AUTH_MODE"] = "disabled"

    @staticmethod
    def _node_ports(node_manager_port: int) -> list[str]:
        """Every fixed port of one raylet, all distinct (worker ports: Ray picks free ones)."""
        ports = distinct_free_ports(5)
        return [f"--node-manager-port={node_manager_port}", f"--object-manager-port={ports[0]}",
                f"--dashboard-agent-listen-port={ports[1]}", f"--dashboard-agent-grpc-port={ports[2]}",
                f"--runtime-env-agent-port={ports[3]}", f"--metrics-export-port={ports[4]}"]

    def _ray(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([RAY, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                              start_new_session=True)

    def start(self) -> None:
        common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats"]
        head = self._ray("start", "--head", f"--temp-dir={self.temp_dir}", f"--port={self.port}",
                         "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                         f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={self.client_port}",
                         '--resources={"trainer_pool": 1}', *common, *self._node_ports(self.head_node_port))
        assert head.returncode == 0, f"ray start --head failed:\n{head.stdout}\n{head.stderr}"
        self.start_worker()

    def start_worker(self) -> None:
        """The second raylet, holding `rollout_pool`; returns once the head counts 2 live nodes."""
        [self.worker_port] = distinct_free_ports(1, avoid={self.port, self.dashboard_port, self.client_port})
        # Its own temp dir (under the same prefix, so stop() finds it): two raylets sharing one
        # would unpack the job's working_dir into the same folder while the driver imports from it.
        self.workers_started += 1
        worker_dir = f"{self.temp_dir}-worker{self.workers_started}"
        worker = self._ray("start", f"--address=127.0.0.1:{self.port}", f"--temp-dir={worker_dir}",
                           '--resources={"rollout_pool": 1}', "--node-ip-address=127.0.0.1", "--num-cpus=1",
                           "--num-gpus=0", "--disable-usage-stats", *self._node_ports(self.worker_port))
        assert worker.returncode == 0, f"ray start (worker) failed:\n{worker.stdout}\n{worker.stderr}"
        deadline = time.monotonic() + 60
        while (status := self._ray("status", f"--address=127.0.0.1:{self.port}")).stdout.count("node_") < 2:
            assert time.monotonic() < deadline, f"the worker never joined:\n{status.stdout}\n{status.stderr}"
            time.sleep(2)

    def kill_worker_raylet(self) -> None:
        """SIGKILL the worker node's raylet (the fault): its actors die with it."""
        [raylet] = [p for p in psutil.process_iter(["cmdline"]) if (cmd := " ".join(p.info["cmdline"] or []))
                    and "raylet" in cmd and self.temp_dir in cmd and f"--node_manager_port={self.worker_port}" in cmd]
        raylet.send_signal(signal.SIGKILL)

    def wait_done(self, submission_id: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while (status := self.job_status(submission_id)) not in {"SUCCEEDED", "FAILED", "STOPPED"}:
            assert time.monotonic() < deadline, f"job {submission_id} still {status} after {timeout:.0f}s"
            time.sleep(3)
        return status

    def job_logs(self, submission_id: str) -> str:
        return self._ray("job", "logs", f"--address={self.dashboard}", submission_id).stdout

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def submit(self, submission_id: str, entrypoint: list[str], timeout: float,
               wait: bool = True) -> subprocess.CompletedProcess:
        """`ray job submit` shipping the repository as working_dir; returns when the job ends
        (or, with wait=False, once it is submitted)."""
        return self._ray("job", "submit", f"--address={self.dashboard}", f"--submission-id={submission_id}",
                         f"--working-dir={REPO}", *([] if wait else ["--no-wait"]), "--", *entrypoint,
                         timeout=timeout)

    def job_status(self, submission_id: str) -> str:
        """SUCCEEDED, FAILED, ... as `ray job status` reports it."""
        result = self._ray("job", "status", f"--address={self.dashboard}", submission_id)
        text = result.stdout + result.stderr
        found = re.search(rf"Status for job '{submission_id}': (\w+)|Job '{submission_id}' (\w+)", text)
        assert found, f"no status in:\n{text}"
        return (found.group(1) or found.group(2)).upper()

    def stop(self) -> None:
        """SIGKILL every process of this cluster (and their children), by pid."""
        mine = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if any(self.temp_dir in arg for arg in proc.info["cmdline"] or []):
                    mine.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        family = {p.pid: p for p in mine}
        for proc in mine:
            try:
                family.update({c.pid: c for c in proc.children(recursive=True)})
            except psutil.NoSuchProcess:
                continue
        for proc in family.values():
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(list(family.values()), timeout=30)
        for k in range(self.workers_started + 1):
            shutil.rmtree(self.temp_dir + (f"-worker{k}" if k else ""), ignore_errors=True)


@pytest.fixture(scope="module")
def two_node_cluster():
    cluster = TwoNodeCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def write_recipe(tmp_path: Path, model: Path, task_dir: Path, steps: int = 2, **cluster) -> Path:
    """The shipped two-node recipe at tiny size, with absolute paths (the job runs elsewhere)."""
    raw = yaml.safe_load((REPO / "recipes" / "grpo_two_node.yaml").read_text())
    raw["output_dir"] = str(tmp_path / "runs")
    raw["model"]["path"] = str(model)
    raw["data"] = {"train": {"path": str(task_dir / "train.jsonl")}, "max_length": 32}
    raw["trainer"].update(micro_batch_size=16, warmup_steps=0)
    raw["rollout"]["max_tokens"] = 4
    raw["grpo"].update(steps=steps, prompts_per_step=4, group_size=4, eval_every=None, eval_limit=None,
                       save_every=None, drop_flat_groups=False)
    for key, value in cluster.items():
        raw["cluster"]["placement"][key] = value
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_pinned_roles_run_on_their_nodes(two_node_cluster, tiny_model_dir, task_dir, tmp_path):
    recipe, run_dir = write_recipe(tmp_path, tiny_model_dir, task_dir), tmp_path / "run"
    t0 = time.monotonic()
    job = two_node_cluster.submit("rlp-two-node-ok", [str(BIN / "rlp"), "grpo", str(recipe), "--run-dir",
                                                      str(run_dir)], timeout=600)
    took = time.monotonic() - t0
    logs = job.stdout[-6000:] + job.stderr[-3000:]
    assert job.returncode == 0, f"job failed after {took:.0f}s:\n{logs}"
    assert two_node_cluster.job_status("rlp-two-node-ok") == "SUCCEEDED"

    placement = json.loads((run_dir / "placement.json").read_text())
    nodes, roles = placement["nodes"], placement["roles"]
    assert set(roles) == {"trainer", "rollout", "reward"}  # kl_coef 0: no reference
    for role, pool in [("trainer", "trainer_pool"), ("rollout", "rollout_pool"), ("reward", "rollout_pool")]:
        for node_id in roles[role]:
            assert pool in nodes[node_id]["resources"], f"{role} ran on {nodes[node_id]}, not on the {pool} node"
    assert set(roles["trainer"]).isdisjoint(roles["rollout"])  # two different raylets
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert (run_dir / "final_model" / "config.json").is_file()
    assert "placement: trainer on node(s)" in logs  # the driver logs it too


def test_asking_for_missing_resources_fails_fast_naming_them(two_node_cluster, tiny_model_dir, task_dir, tmp_path):
    recipe = write_recipe(tmp_path, tiny_model_dir, task_dir, trainer={"resources": {"trainer_pool": 0.01}},
                          rollout={"resources": {"h100_pool": 0.01}})
    t0 = time.monotonic()
    # A wait for the placement group would take cluster.ready_timeout_s (600 s here): failing in
    # well under that shows the check ran before anything was reserved.
    job = two_node_cluster.submit("rlp-two-node-short", [str(BIN / "rlp"), "grpo", str(recipe),
                                                         "trainer.num_ranks=3", "cluster.ready_timeout_s=600"],
                                  timeout=300)
    took = time.monotonic() - t0
    logs = job.stdout + job.stderr
    assert job.returncode != 0
    assert two_node_cluster.job_status("rlp-two-node-short") == "FAILED"
    # h100_pool exists nowhere; 3 trainer ranks x 0.5 CPU need 1.5 CPUs of trainer_pool's node, which has 1.
    assert "error: the Ray cluster cannot host this job:" in logs, logs[-4000:]
    assert "needs 0.01 h100_pool (rollout 1 x 0.01) but no node has it" in logs, logs[-4000:]
    assert "trainer: 3 x {CPU: 0.5, trainer_pool: 0.01} do not fit: each must fit on one node and the nodes " \
           "have room for 2" in logs, logs[-4000:]
    assert "Traceback" not in logs  # one line, like any bad input
    assert "placement: " not in logs  # no actor was started
    assert took < 150, f"took {took:.0f}s to fail"


def test_worker_node_lost_mid_run_fails_clearly_and_the_checkpoint_resumes(two_node_cluster, tiny_model_dir,
                                                                           task_dir, tmp_path):
    """Fault: SIGKILL the rollout node's raylet after the step-2 checkpoint. No other node has
    rollout_pool, so the job cannot recover: it must fail within a bounded time with a message
    naming the lost role, leave the checkpoint intact, and resume once a rollout node is back.
    Runs last in this module: it replaces the cluster's worker node."""
    # Tiny steps take ~0.5 s: 30 of them leave time to kill the node after the first checkpoint.
    recipe, run_dir = write_recipe(tmp_path, tiny_model_dir, task_dir, steps=30), tmp_path / "run"
    entry = [str(BIN / "rlp"), "grpo", str(recipe), "--run-dir", str(run_dir), "grpo.save_every=2",
             "cluster.ready_timeout_s=45"]
    submitted = two_node_cluster.submit("rlp-two-node-fault", entry, timeout=120, wait=False)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    latest = run_dir / "checkpoints" / "latest"
    deadline = time.monotonic() + 480
    next_status_check = time.monotonic() + 15
    while not latest.exists():
        assert time.monotonic() < deadline, "no checkpoint within 480 s"
        if time.monotonic() > next_status_check:  # the CLI call is slow: not on every poll
            assert two_node_cluster.job_status("rlp-two-node-fault") in {"PENDING", "RUNNING"}, \
                two_node_cluster.job_logs("rlp-two-node-fault")[-4000:]
            next_status_check = time.monotonic() + 15
        time.sleep(0.1)
    two_node_cluster.kill_worker_raylet()
    killed = time.monotonic()
    # Bound: node-death detection (~30 s) + cluster.ready_timeout_s (45 s) for a replacement + slack.
    status = two_node_cluster.wait_done("rlp-two-node-fault", timeout=240)
    took = time.monotonic() - killed
    logs = two_node_cluster.job_logs("rlp-two-node-fault")
    assert status == "FAILED", logs[-4000:]
    assert not (run_dir / "final_model").exists()
    # Engines and reward service lived on that node: whichever the driver calls next reports it,
    # the engine's replacement after cluster.ready_timeout_s, the reward service at once.
    flat = " ".join(logs.split())  # the CLI's traceback box wraps lines
    assert ("rollout: the replacement of actor 0 did not start within 45s: its node died and no live node can "
            "host the bundle again (bundle {CPU: 0.25, rollout_pool: 0.01}" in flat
            or "The actor died because its node has died" in flat), logs[-4000:]
    print(f"failed {took:.0f}s after the raylet kill; last lines:\n" + "\n".join(logs.splitlines()[-8:]))

    checkpoint = run_dir / "checkpoints" / latest.read_text().strip()
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["step"] % 2 == 0 and state["step"] < 30 and checkpoint.name == f"step_{state['step']:08d}"

    two_node_cluster.start_worker()  # a rollout node again
    resumed = two_node_cluster.submit("rlp-two-node-resume", [*entry, "--resume"], timeout=600)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 31)), steps  # each step logged once across the fault
    assert (run_dir / "final_model" / "config.json").is_file()
