"""profiles/slurm on a live SLURM cluster: munged, slurmctld and slurmd on 127.0.0.1, one node with two
(pretend) GPUs.

The demo, made small (`demo_config`) and sharded, runs as the README's cluster section says: from a checkout,
`vop install-profile slurm --partition ... --account ...`, then exactly `snakemake --profile slurm all`. Its
table must equal an unsharded local run's, and every job must have gone through sbatch with the resources of
its rule (or of its group).

Needs root (slurmd runs jobs as their user) and Debian's slurmctld, slurmd, slurm-client and munge,
which .ci/run installs. Where they are missing the test fails, unless this machine cannot install them
(not root, no apt-get): then it skips and says why.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# what a user runs the workflow from: their checkout (its workflow files; the config is the test's)
CHECKOUT = ["Snakefile", "workflow", "scripts", "envs", "profiles"]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
SLURM_TOOLS = ["munged", "munge", "slurmctld", "slurmd", "sbatch", "squeue", "srun", "scontrol", "sinfo", "scancel"]
PARTITION, ACCOUNT = "vopdebug", "vopacct"
# slurm clients look here when SLURM_CONF is not set: the plugin's job step drops SLURM_* variables
# before its inner `srun`, which then finds the configuration the way it does on a configless node
RUN_CONF = Path("/run/slurm/conf")

pytestmark = pytest.mark.workflow


def demo_config() -> dict:
    """config/config.yaml with the demo made small: one evaluation and one training scene of 8 images,
    a 2-epoch encoder, three methods (trained VOP head, CLS, oracle). Every rule of the demo still runs."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    small = {"num_images": 8, "width": 320, "height": 240}
    demo, train = config["datasets"]["demo"], config["datasets"]["demo_train"]
    demo.update(scenes=demo["scenes"][:1], methods=["vop", "cls", "oracle"])
    train.update(scenes=train["scenes"][:1])
    demo["synthetic"].update(small)
    train["synthetic"].update(small)
    config["datasets"] = {"demo": demo, "demo_train": train}
    config["encoders"] = {"vop_sift": config["encoders"]["vop_sift"]}
    config["encoders"]["vop_sift"]["train"].update(epochs=2, batch_size=8)
    config["methods"] = {m: config["methods"][m] for m in demo["methods"]}
    config["methods"]["vop"]["prefilter"] = 5
    config["labels"].update(pairs_per_bin=5, num_negative=5, stride=4)
    return config


def require_slurm() -> None:
    missing = [tool for tool in SLURM_TOOLS if shutil.which(tool) is None]
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("the live SLURM test needs root and apt-get (slurmd runs the jobs; .ci/run installs "
                    "slurmctld slurmd slurm-client munge)")
    if missing:
        pytest.fail(f"SLURM tools missing: {', '.join(missing)}; install them with "
                    "`apt-get install slurmctld slurmd slurm-client munge` (.ci/run does)")
    if Path("/etc/slurm/slurm.conf").exists():
        pytest.fail("/etc/slurm/slurm.conf exists: this machine belongs to a real cluster, whose configuration "
                    "the test's jobs would pick up; run the live test on a machine without one (CI does)")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def wait_for(what: str, check, timeout: float, logs: list[Path], daemons=()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        exited = [d.args[0] for d in daemons if d.poll() is not None]
        if exited:
            problem = f"{', '.join(exited)} exited"
            break
        time.sleep(0.5)
    else:
        problem = f"not within {timeout:.0f} s"
    tails = "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.exists())
    pytest.fail(f"waiting for {what}: {problem}\n{tails}")


def quiet(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=30, check=False)


class Cluster:
    """One-node SLURM in `root`: munged with its own key and socket, slurmctld and slurmd on free ports."""

    def __init__(self, root: Path):
        self.root = root
        self.conf_dir = root / "etc"
        self.log_dir = root / "log"
        self.munge_socket = root / "munge" / "munge.socket"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf_dir / "slurm.conf")}
        self.daemons: list[subprocess.Popen] = []
        self.node = socket.gethostname().split(".")[0]

    def start(self) -> None:
        for sub in ("etc", "log", "munge", "state", "spool"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o755)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self._spawn("munged", ["munged", "--foreground", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={key}", f"--pid-file={self.root / 'munge' / 'munged.pid'}",
                               f"--seed-file={self.root / 'munge' / 'munged.seed'}",
                               f"--log-file={self.log_dir / 'munged.log'}"])
        wait_for("munged answering", lambda: quiet(["munge", "-n", "-S", str(self.munge_socket)],
                                                   self.env).returncode == 0, 30, self.logs, self.daemons)
        ctld_port, slurmd_port = free_ports(2)
        (self.conf_dir / "slurm.conf").write_text(self._slurm_conf(ctld_port, slurmd_port))
        # two GPUs, so that `--gpus=1` jobs are scheduled as on a GPU cluster: any character devices will do
        # for slurmd (its jobs get CUDA_VISIBLE_DEVICES; torch finds no CUDA and runs on the CPU)
        devices = "".join(f"NodeName={self.node} Name=gpu File={dev}\n" for dev in ("/dev/null", "/dev/zero"))
        (self.conf_dir / "gres.conf").write_text("AutoDetect=off\n" + devices)
        self._link_run_conf()
        conf = str(self.conf_dir / "slurm.conf")
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", conf])
        wait_for("slurmctld answering", lambda: quiet(["scontrol", "ping"], self.env).stdout.count("UP") == 1,
                 60, self.logs, self.daemons)
        self._spawn("slurmd", ["slurmd", "-D", "-f", conf, "-N", self.node])
        wait_for("the node becoming idle", lambda: quiet(["sinfo", "-h", "-o", "%T"], self.env).stdout.strip()
                 == "idle", 60, self.logs, self.daemons)

    @property
    def logs(self) -> list[Path]:
        return sorted(self.log_dir.iterdir())  # the daemons' log files and their stdout (early errors)

    def _spawn(self, name: str, cmd: list[str]) -> None:
        with open(self.log_dir / f"{name}.out", "w") as out:
            self.daemons.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env))

    def _link_run_conf(self) -> None:
        if RUN_CONF.is_symlink():
            RUN_CONF.unlink()  # left by an earlier run that was killed; the lock says none is running
        elif RUN_CONF.exists():
            pytest.fail(f"{RUN_CONF} exists (configless slurmd of a real cluster); run the live test elsewhere")
        RUN_CONF.parent.mkdir(parents=True, exist_ok=True)
        RUN_CONF.symlink_to(self.conf_dir)

    def _slurm_conf(self, ctld_port: int, slurmd_port: int) -> str:
        r = self.root
        # CPUs and memory are declared larger than this 2-core machine (config_overrides) so that the
        # small demo's jobs share it as they would share a cluster; nothing here enforces memory
        return f"""\
ClusterName=voptest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd.pid'}
SlurmctldLogFile={self.log_dir / 'slurmctld.log'}
SlurmdLogFile={self.log_dir / 'slurmd.log'}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=7200
GresTypes=gpu
NodeName={self.node} NodeAddr=127.0.0.1 CPUs=8 RealMemory=64000 Gres=gpu:2 State=UNKNOWN
PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""

    def jobs(self) -> pd.DataFrame:
        """Every job slurmctld still knows (MinJobAge keeps finished ones): id, state, account,
        partition, CPUs, memory and the comment the plugin sets to the rule and wildcards."""
        out = quiet(["squeue", "--states=all", "--noheader", "--format=%i|%T|%a|%P|%C|%m|%k"], self.env)
        assert out.returncode == 0, out.stderr
        rows = [line.split("|", 6) for line in out.stdout.splitlines() if line.strip()]
        return pd.DataFrame(rows, columns=["id", "state", "account", "partition", "cpus", "memory", "comment"])

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            quiet(["scancel", "--partition", PARTITION], self.env)  # jobs of a failed run: stop their steps
            time.sleep(1)
        for proc in reversed(self.daemons):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if RUN_CONF.is_symlink() and Path(os.readlink(RUN_CONF)) == self.conf_dir:
            RUN_CONF.unlink()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    require_slurm()
    # one live cluster per machine at a time: it owns /run/slurm/conf
    lock_path = Path("/run/lock/vop-slurm-test.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        live = Cluster(tmp_path_factory.mktemp("slurm"))
        try:
            live.start()
            yield live
        finally:
            live.stop()


def run(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=cwd,
                          env={**(env or os.environ), "PYTHONUNBUFFERED": "1"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{out[-8000:]}"
    return out


def workdir_with_config(path: Path, config: dict) -> Path:
    (path / "config").mkdir(parents=True, exist_ok=True)
    (path / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def checkout_with_config(path: Path, config: dict) -> Path:
    """A checkout's workflow files (copied) with `config` as its config/config.yaml."""
    path.mkdir(parents=True)
    for name in CHECKOUT:
        copy_tree = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy_tree(REPO / name, path / name)
    return workdir_with_config(path, config)


IMAGES_PER_JOB = 3  # 8 images: shards of 3, 3 and 2 images and queries


def test_sharded_demo_through_the_profile_equals_an_unsharded_local_run(cluster, tmp_path):
    config = demo_config()
    local = workdir_with_config(tmp_path / "local", config)
    sharded = copy.deepcopy(config)
    sharded["datasets"]["demo"]["images_per_job"] = IMAGES_PER_JOB
    checkout = checkout_with_config(tmp_path / "checkout", sharded)
    # a new user: their own HOME, whose ~/.config/snakemake gets the profile
    user_env = {k: v for k, v in cluster.env.items() if k != "XDG_CONFIG_HOME"} | {"HOME": str(tmp_path / "home")}
    vop = str(Path(sys.executable).with_name("vop"))
    run([vop, "install-profile", "slurm", "--partition", PARTITION, "--account", ACCOUNT], user_env)

    # the local reference runs beside the cluster run, whose jobs mostly wait for status polls
    local_log = tmp_path / "local.log"
    with open(local_log, "w") as log:
        local_run = subprocess.Popen([*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(local),
                                      "--cores", "2", "results/demo/auc.csv"],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out = run([*SNAKEMAKE, "--profile", "slurm", "all"], user_env, cwd=checkout)
    except BaseException:
        os.killpg(local_run.pid, signal.SIGKILL)  # snakemake and its jobs
        raise
    finally:
        local_run.wait()
    assert "Provided remote nodes" in out  # the SLURM executor ran it, not the local one
    assert local_run.returncode == 0, local_log.read_text()[-8000:]

    expected = pd.read_csv(local / "results/demo/auc.csv")
    table = pd.read_csv(checkout / "results/demo/auc.csv")
    assert list(table["method"].unique()) == ["vop", "vop+scale", "cls", "cls+scale", "oracle"]  # pose.scale_aware
    pd.testing.assert_frame_equal(table, expected)
    scene = next(p.name for p in (local / "results/demo").iterdir() if (p / "cls").is_dir())
    for method in ("vop", "cls"):
        for name in ("pairs.txt", "scores.csv"):
            path = f"results/demo/{scene}/{method}/{name}"
            assert (checkout / path).read_bytes() == (local / path).read_bytes(), path
    assert len(list((checkout / f"results/demo/{scene}/shards").glob("features-*.h5"))) == 3

    jobs = cluster.jobs()
    assert set(jobs["state"]) == {"COMPLETED"}, jobs
    assert set(jobs["account"]) == {ACCOUNT} and set(jobs["partition"]) == {PARTITION}
    # one job per shard and per scene index; the small stages in group jobs (their comment: the group, then
    # its rules), the three pose, two overlap and two scale-aware pose jobs batched in one; the shard plan and
    # the tables are local
    assert Counter(jobs["comment"].str.replace(r"_wildcards_.*", "", regex=True)) == {
        "rule_scene_generate_scene_ground_truth_local_features": 1,
        "rule_scene_generate_scene_ground_truth_patch_labels": 1,
        "rule_features_shard": 3, "rule_scene_gpu_features": 1, "rule_train_encoder": 1,
        "rule_scene_gpu_embeddings_features": 1, "rule_scene_index": 2, "rule_retrieve_shard": 6,
        "rule_scene_gpu_matches_retrieve": 3, "rule_pose_overlap_pose_pose_scale_aware": 1, "rule_plots": 1,
        "rule_nso_plots": 1}, jobs
    # sbatch got each single job's threads and mem_mb as its rule resolved them for its wildcards
    resources = threads_and_memory(out)
    singles = jobs[jobs["comment"].str.contains("_wildcards_")]
    assert len(singles) == 14
    for comment, cpus, memory in zip(singles["comment"], singles["cpus"], singles["memory"]):
        threads, mem_mb = resources[comment]
        assert (int(cpus), memory) == (threads, f"{mem_mb}M"), comment


def threads_and_memory(run_output: str) -> dict[str, tuple[int, int]]:
    """threads and mem_mb of every job as Snakemake resolved them, from a run's job listing, keyed as the SLURM
    plugin writes the job's comment (`rule_<rule>_wildcards_<values>`)."""
    found = {}
    for block in run_output.split("\nrule ")[1:]:
        block = block.split("\n\n", 1)[0]  # the job's own lines (a group job's listing may follow)
        rule = block.split(":", 1)[0].strip()
        wildcards = re.search(r"wildcards: (.*)", block)
        values = [kv.split("=", 1)[1] for kv in wildcards.group(1).split(", ")] if wildcards else []
        threads = re.search(r"threads: (\d+)", block)
        mem = re.search(r"mem_mb=(\d+)", block)
        key = f"rule_{rule}_wildcards_{'_'.join(values)}"
        found[key] = (int(threads.group(1)) if threads else 1, int(mem.group(1)))
    return found
