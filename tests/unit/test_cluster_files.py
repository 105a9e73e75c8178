"""The files of cluster/: shell scripts pass shellcheck, YAML parses, the `ray up` config
validates against the schema Ray itself ships, the KubeRay RayJob has the fields its CRD
requires, and the SLURM script, run against stub srun/scontrol/ray, starts the head first,
one worker per other node with the head's address, submits the job and stops its steps."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
SCRIPTS = [CLUSTER / "local.sh", CLUSTER / "slurm" / "rlp.sbatch"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_pass_shellcheck(script):
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (Debian: apt-get install -y shellcheck)")
    result = subprocess.run(["shellcheck", "--shell=bash", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert os.access(script, os.X_OK), f"{script} is not executable"


def test_every_yaml_file_parses():
    files = sorted(CLUSTER.rglob("*.yaml"))
    assert len(files) >= 2
    for path in files:
        assert isinstance(yaml.safe_load(path.read_text()), dict), path


def test_ray_up_config_validates_against_rays_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    with pytest.raises(jsonschema.ValidationError):  # the schema is strict enough to catch a typo
        jsonschema.validate({**config, "max_worker": 3}, schema)
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    pools = {name for t in types.values() for name in t["resources"]}
    assert {"trainer_pool", "rollout_pool"} <= pools  # what recipes/grpo_two_node.yaml pins to


def _require(node: dict, path: str, *keys: str) -> None:
    missing = [k for k in keys if k not in node]
    assert not missing, f"{path}: missing required {missing}"


def _check_pod_template(template: dict, path: str) -> list[dict]:
    _require(template, path, "spec")
    _require(template["spec"], f"{path}.spec", "containers")
    containers = template["spec"]["containers"]
    assert containers, f"{path}.spec.containers is empty"
    for i, container in enumerate(containers):
        _require(container, f"{path}.spec.containers[{i}]", "name", "image")
    return containers


def test_kuberay_rayjob_has_the_fields_the_crd_requires():
    """No KubeRay CRD validator installs from the registries here, so check by hand what the
    ray.io/v1 RayJob CRD (KubeRay >= 1.1) requires and what this job needs to run."""
    job = yaml.safe_load((CLUSTER / "kuberay" / "rayjob-grpo.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    _require(job, "", "metadata", "spec")
    _require(job["metadata"], "metadata", "name")
    spec = job["spec"]
    _require(spec, "spec", "entrypoint", "rayClusterSpec")
    assert spec["entrypoint"].split()[:2] == ["rlp", "grpo"]
    assert spec.get("shutdownAfterJobFinishes") is True  # GPUs are released when the job ends
    cluster = spec["rayClusterSpec"]
    _require(cluster, "spec.rayClusterSpec", "headGroupSpec", "workerGroupSpecs")
    assert cluster.get("rayVersion") == ray.__version__
    head = cluster["headGroupSpec"]
    _require(head, "headGroupSpec", "rayStartParams", "template")  # rayStartParams: required before 1.1
    assert all(isinstance(v, str) for v in head["rayStartParams"].values()), "rayStartParams values are strings"
    _check_pod_template(head["template"], "headGroupSpec.template")
    gpus = 0
    for i, group in enumerate(cluster["workerGroupSpecs"]):
        path = f"workerGroupSpecs[{i}]"
        _require(group, path, "groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template")
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], path
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), path
        for container in _check_pod_template(group["template"], f"{path}.template"):
            limits = container.get("resources", {}).get("limits", {})
            gpus += int(limits.get("nvidia.com/gpu", 0)) * group["replicas"]
        if "resources" in group["rayStartParams"]:  # KubeRay passes it to `ray start --resources` as is
            json.loads(json.loads(group["rayStartParams"]["resources"]))
    assert gpus > 0, "no worker group asks for GPUs"


STUB_SRUN = """#!/usr/bin/env bash
# srun --nodes=1 --ntasks=1 --nodelist=HOST CMD...: log the node and run CMD here.
node=""
while [[ "$1" == --* ]]; do [[ "$1" == --nodelist=* ]] && node=${1#--nodelist=}; shift; done
echo "srun $node: $*" >> "$STUB_LOG"
exec "$@"
"""
STUB_SCONTROL = """#!/usr/bin/env bash
printf 'gpu-a\\ngpu-b\\ngpu-c\\n'
"""
STUB_HOSTNAME = """#!/usr/bin/env bash
echo "10.1.2.3 172.17.0.1"
"""
STUB_RAY = """#!/usr/bin/env bash
echo "ray $*" >> "$STUB_LOG"
[[ "$1 $2" == "job submit" ]] && exit "${STUB_JOB_RC:-0}"
exit 0
"""
STUB_PYTHON = """#!/usr/bin/env bash
# The script's node count: the `ray start` steps that have run (waits up to 10 s for all 3).
cat > /dev/null
for _ in $(seq 100); do
  [[ $(grep -c '^ray start' "$STUB_LOG" 2>/dev/null) -ge 3 ]] && break
  sleep 0.1
done
grep -c '^ray start' "$STUB_LOG"
"""


@pytest.fixture()
def slurm_stubs(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in [("srun", STUB_SRUN), ("scontrol", STUB_SCONTROL), ("hostname", STUB_HOSTNAME),
                       ("ray", STUB_RAY), ("python", STUB_PYTHON)]:
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.log"
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_LOG": str(log), "SLURM_JOB_ID": "77",
           "SLURM_JOB_NODELIST": "gpu-[a-c]", "SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_GPUS_PER_NODE": "h100:4",
           "RAY": str(bin_dir / "ray"), "PYTHON": str(bin_dir / "python"), "VENV": "/opt/venv", "HEAD_WAIT_S": "0",
           "HOME": str(tmp_path)}

    def run(*args: str, job_rc: int = 0) -> tuple[subprocess.CompletedProcess, list[str]]:
        result = subprocess.run(["bash", str(CLUSTER / "slurm" / "rlp.sbatch"), *args], capture_output=True,
                                text=True, timeout=60, env={**env, "STUB_JOB_RC": str(job_rc)}, cwd=tmp_path)
        return result, log.read_text().splitlines() if log.exists() else []

    return run


def test_slurm_script_starts_head_then_workers_then_submits(slurm_stubs, tmp_path):
    result, calls = slurm_stubs("grpo", "recipes/grpo_two_node.yaml", "grpo.steps=5")
    assert result.returncode == 0, result.stdout + result.stderr
    # The steps run in the background (a real head gets HEAD_WAIT_S to bind first): any log order.
    starts = sorted((c for c in calls if c.startswith("ray start")), key=lambda c: "--head" not in c)
    assert starts[0].startswith("ray start --head --block --node-ip-address=10.1.2.3 --port=6379")
    assert '--resources={"slurm_node_0": 1}' in starts[0] and "--num-gpus=4" in starts[0]  # "h100:4" -> 4
    assert len(starts) == 3
    for k, start in enumerate(sorted(starts[1:]), 1):
        assert "--address=10.1.2.3:6379" in start and f'{{"slurm_node_{k}": 1}}' in start and "--num-gpus=4" in start
    # srun calls: the head's IP lookup, then one `ray start` step per node.
    assert sorted(c.split(":")[0] for c in calls if c.startswith("srun")) == ["srun gpu-a"] * 2 + ["srun gpu-b", "srun gpu-c"]
    [submit] = [c for c in calls if c.startswith("ray job submit")]
    assert submit.startswith("ray job submit --address=http://10.1.2.3:8265 --submission-id=rlp-77-")
    assert f"--working-dir={tmp_path} " in submit
    assert submit.endswith(f"-- /opt/venv/bin/rlp grpo recipes/grpo_two_node.yaml output_dir={tmp_path}/runs "
                           "grpo.steps=5")
    assert "Ray nodes alive: 3 of 3" in result.stdout
    assert "ray get-auth-token --generate" in calls  # token auth on, and no token in the (stub) home yet


def test_slurm_script_fails_when_the_job_fails_and_without_arguments(slurm_stubs):
    result, _ = slurm_stubs("grpo", "recipes/grpo_two_node.yaml", job_rc=1)
    assert result.returncode == 1
    result, _ = slurm_stubs()
    assert result.returncode == 2 and "usage: sbatch" in result.stderr
