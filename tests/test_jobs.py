"""Launch scripts (jobs/): DRY_RUN prints the launch line that would run; fake launchers
on PATH stand in for srun / mpiexec, so nothing here needs Slurm or PBS. A stand-in
`nvidia-smi` (first on PATH for every script run here) lists FAKE_GPUS GPUs (default 4, a
Polaris node), so no test depends on the GPUs of the machine it runs on."""

import atexit
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from helpers import REPO

JOBS = REPO / "jobs"
SCRIPTS = ["local.sh", "slurm.sbatch", "pbs_polaris.sh", "horovodrun.sh"]
CORES = len(os.sched_getaffinity(0))  # what `nproc` counts
JEMALLOC_CONF = "MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1"

# Settings the scripts read: the tests start from none of them, whatever the caller's shell has.
_SCRIPT_VARS = {"OMP_NUM_THREADS", "DRY_RUN", "ARGS", "CMD", "MPIRUN_ARGS", "MPIEXEC_ARGS", "HOROVODRUN_ARGS",
                "RANKS_PER_NODE", "DEPTH", "GPUS_PER_NODE", "GPU_AFFINITY", "MALLOC_CONF", "LD_PRELOAD", "HVD_STGNN_ROOT",
                "ALLOW_GPU_SHARING", "MPICH_MAX_THREAD_SAFETY", "FAKE_GPUS", "CUDA_VISIBLE_DEVICES"}

# The stand-in nvidia-smi: `-L` lists $FAKE_GPUS GPUs (default 4); 0: what a node without a
# working GPU says, and exit status 6.
_GPU_SHIM = Path(tempfile.mkdtemp(prefix="hvd-stgnn-fake-nvidia-smi-"))
atexit.register(shutil.rmtree, _GPU_SHIM, True)
(_GPU_SHIM / "nvidia-smi").write_text("""#!/usr/bin/env bash
n="${FAKE_GPUS:-4}"
if [ "$n" = 0 ]; then echo "No devices were found"; exit 6; fi
for ((i = 0; i < n; i++)); do echo "GPU $i: NVIDIA A100-SXM4-40GB (UUID: GPU-fake-$i)"; done
""")
(_GPU_SHIM / "nvidia-smi").chmod(0o755)


def _env(**env) -> dict:
    base = {k: v for k, v in os.environ.items()
            if k not in _SCRIPT_VARS and not k.startswith(("SLURM_", "SRUN_", "PBS_", "HVD_STGNN_JEMALLOC", "HOROVOD_",
                                                           "NCCL_"))}
    merged = {**base, **env}
    merged["PATH"] = f"{_GPU_SHIM}{os.pathsep}{merged['PATH']}"
    return merged


def _run(script, *args, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(JOBS / script), *args], capture_output=True, text=True, env=_env(**env),
                          timeout=60)


def _dry(script, *args, **env):
    r = _run(script, *args, DRY_RUN="1", **env)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def _nodefile(tmp_path, *hosts):
    path = tmp_path / "nodefile"
    path.write_text("".join(f"{h}\n" for h in hosts))
    return str(path)


def _fake_launcher(bin_dir, name, body):
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


# ---- every script ---------------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_parses_and_is_executable(script):
    r = subprocess.run(["bash", "-n", str(JOBS / script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert os.access(JOBS / script, os.X_OK)
    head = (JOBS / script).read_text().splitlines()[:12]
    assert any("Usage" in line for line in head), "each script documents its usage at the top"


def test_the_old_pbs_script_is_gone():
    assert not (JOBS / "pbs.sh").exists()


@pytest.mark.parametrize("script,args,env", [
    ("local.sh", ["-np", "2"], {}),
    ("slurm.sbatch", [], {"SLURM_CPUS_PER_TASK": "4"}),
    ("pbs_polaris.sh", [], {}),
    ("horovodrun.sh", ["-np", "2"], {}),
])
def test_dry_run_prints_one_line_and_launches_nothing(tmp_path, script, args, env):
    marker = tmp_path / "launched"
    path = os.environ["PATH"]
    for launcher in ("mpirun", "srun", "mpiexec", "horovodrun"):
        path = _fake_launcher(tmp_path / "bin", launcher, f"touch {marker}\n")
    line = _dry(script, *args, "python", "-c", "print('a b')", PATH=path, **env)
    assert len(line.splitlines()) == 1
    assert shlex.split(line)[-3:] == ["python", "-c", "print('a b')"]  # shell-quoted: pastes back as the same words
    assert not marker.exists()


@pytest.mark.parametrize("script,args,env", [
    ("local.sh", ["-np", "2"], {}),
    ("slurm.sbatch", [], {"SLURM_CPUS_PER_TASK": "4"}),
    ("pbs_polaris.sh", [], {"GPUS_PER_NODE": "0"}),
    ("horovodrun.sh", ["-np", "2"], {}),
])
def test_jemalloc_is_opt_in(tmp_path, script, args, env):
    lib = tmp_path / "libjemalloc.so.2"
    lib.write_bytes(b"")
    cmd = ["hvd-stgnn", "data", "info", "x.h5"]
    assert "LD_PRELOAD" not in _dry(script, *args, *cmd, HVD_STGNN_JEMALLOC_LIB=str(lib), **env)
    words = shlex.split(_dry(script, *args, *cmd, HVD_STGNN_JEMALLOC="1", HVD_STGNN_JEMALLOC_LIB=str(lib), **env))
    assert words[-7:] == ["env", f"LD_PRELOAD={lib}", JEMALLOC_CONF, *cmd]
    # Asked for but not there: one warning line, the default allocator, still exit 0.
    r = _run(script, *args, *cmd, DRY_RUN="1", HVD_STGNN_JEMALLOC="1", HVD_STGNN_JEMALLOC_LIB=str(tmp_path / "nope.so"),
             **env)
    assert r.returncode == 0 and "LD_PRELOAD" not in r.stdout
    assert [line for line in r.stderr.splitlines() if "warning" in line and "jemalloc" in line]


# ---- local.sh ---------------------------------------------------------------------------------


def test_local_adds_oversubscribe_only_past_the_core_count():
    assert _dry("local.sh", "-np", str(CORES), "hvd-stgnn", "train") == f"mpirun -np {CORES} hvd-stgnn train"
    assert "--oversubscribe" in _dry("local.sh", "-np", str(CORES + 1), "hvd-stgnn", "train")
    assert _dry("local.sh", "-np", "4", "hvd-stgnn", "train").startswith(
        "mpirun -np 4 --oversubscribe " if CORES < 4 else "mpirun -np 4 ")


def test_local_rejects_a_bad_rank_count():
    r = subprocess.run(["bash", str(JOBS / "local.sh"), "-np", "two", "true"], capture_output=True, text=True)
    assert r.returncode == 2 and "-np must be a positive integer" in r.stderr
    r = _run("local.sh", "-np", "2")
    assert r.returncode == 2 and "usage:" in r.stderr


def test_local_threads_per_rank():
    # One rank: all the cores, unbound (Open MPI would bind -np 1 to ONE core).
    line = _dry("local.sh", "-np", "1", "hvd-stgnn", "train", "--data", "x.h5")
    assert line.endswith(" hvd-stgnn train --data x.h5") and ("--bind-to none" in line) == (CORES > 1)
    # Yours: exported to the ranks and given to the trainer, unless the command has --threads.
    assert _dry("local.sh", "-np", "1", "hvd-stgnn", "train", "--data", "x.h5", OMP_NUM_THREADS="1") == (
        "mpirun -np 1 hvd-stgnn train --threads 1 --data x.h5")
    assert _dry("local.sh", "-np", "1", "hvd-stgnn", "train", "--threads=1", OMP_NUM_THREADS="1") == (
        "mpirun -np 1 hvd-stgnn train --threads=1")
    r = _run("local.sh", "-np", "1", "true", DRY_RUN="1", OMP_NUM_THREADS="0")
    assert r.returncode == 2 and "OMP_NUM_THREADS" in r.stderr


@pytest.mark.mpi
def test_local_sets_the_rank_environment():
    r = _run("local.sh", "-np", "1", "sh", "-c", 'echo "root=${OMPI_ALLOW_RUN_AS_ROOT:-} threads=$OMP_NUM_THREADS";'
             " command -v hvd-stgnn")
    assert r.returncode == 0, r.stderr
    root = "1" if os.geteuid() == 0 else ""
    assert f"root={root} threads={CORES}" in r.stdout
    assert str(REPO / ".venv" / "bin" / "hvd-stgnn") in r.stdout


# ---- slurm.sbatch -----------------------------------------------------------------------------


def test_cluster_scripts():
    assert _dry("slurm.sbatch", "--data", "x.h5", SLURM_CPUS_PER_TASK="8", OMP_NUM_THREADS="8") == (
        "srun --mpi=pmix --cpu-bind=cores hvd-stgnn train --threads 8 --data x.h5"
    )
    line = _dry("pbs_polaris.sh", RANKS_PER_NODE="4", DEPTH="16", OMP_NUM_THREADS="16", GPUS_PER_NODE="0",
                ARGS="--data x.h5")
    assert line == "mpiexec -n 4 --ppn 4 --depth=16 --cpu-bind depth hvd-stgnn train --threads 16 --data x.h5"


def test_slurm_srun_line():
    slurm = {"SLURM_JOB_ID": "42", "SLURM_NNODES": "2", "SLURM_NTASKS": "8", "SLURM_NTASKS_PER_NODE": "4",
             "SLURM_CPUS_PER_TASK": "8"}
    # The command as arguments; the trainer gets threads = cores per task.
    r = _run("slurm.sbatch", "hvd-stgnn", "train", "--data", "x.h5", "--model", "tgcn", DRY_RUN="1", **slurm)
    assert r.stdout.strip() == "srun --mpi=pmix --cpu-bind=cores hvd-stgnn train --threads 8 --data x.h5 --model tgcn"
    assert "2 node(s), 8 rank(s) (4 per node), 8 thread(s) per rank" in r.stderr
    # Any other command is left alone; the site's PMI and binding are settings.
    assert _dry("slurm.sbatch", "python", "-c", "pass", SRUN_MPI="pmi2", SRUN_CPU_BIND="none", **slurm) == (
        "srun --mpi=pmi2 --cpu-bind=none python -c pass")
    # Nothing: `hvd-stgnn train` and $ARGS; more threads than cores is allowed but warned about.
    r = _run("slurm.sbatch", DRY_RUN="1", ARGS="--data y.h5", OMP_NUM_THREADS="16", **slurm)
    assert r.stdout.strip() == "srun --mpi=pmix --cpu-bind=cores hvd-stgnn train --threads 16 --data y.h5"
    assert "warning: OMP_NUM_THREADS=16 > --cpus-per-task=8" in r.stderr


def test_slurm_outside_a_job_refuses_to_launch():
    r = _run("slurm.sbatch", "--data", "x.h5")
    assert r.returncode == 2 and "not inside a Slurm job" in r.stderr


def test_slurm_environment_reaches_srun(tmp_path):
    path = _fake_launcher(tmp_path / "bin", "srun",
                          'echo "args=$*"; env | grep -E "^(OMP_NUM_THREADS|SRUN_CPUS_PER_TASK|SLURM_KILL_BAD_EXIT|'
                          'SLURM_EXPORT_ENV|HOROVOD_CYCLE_TIME)="; echo "path=$PATH"\n')
    r = _run("slurm.sbatch", "--data", "x.h5", PATH=path, SLURM_JOB_ID="42", SLURM_CPUS_PER_TASK="4",
             SLURM_EXPORT_ENV="NONE", HOROVOD_CYCLE_TIME="5")
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert "args=--mpi=pmix --cpu-bind=cores hvd-stgnn train --threads 4 --data x.h5" in out
    for setting in ("OMP_NUM_THREADS=4", "SRUN_CPUS_PER_TASK=4", "SLURM_KILL_BAD_EXIT=1", "SLURM_EXPORT_ENV=ALL",
                    "HOROVOD_CYCLE_TIME=5"):
        assert setting in out, (setting, out)
    assert f"path={REPO / '.venv' / 'bin'}{os.pathsep}" in r.stdout
    assert "HOROVOD_CYCLE_TIME=5" in r.stderr  # the knobs in effect go to the job log


# ---- pbs_polaris.sh ---------------------------------------------------------------------------


def test_pbs_ranks_from_the_nodefile(tmp_path):
    nodes = _nodefile(tmp_path, "x3001c0s7b0n0", "x3001c0s7b1n0")
    r = _run("pbs_polaris.sh", "hvd-stgnn", "train", "--data", "x.h5", DRY_RUN="1", PBS_NODEFILE=nodes)
    words = shlex.split(r.stdout.strip())
    assert words[:7] == ["mpiexec", "-n", "8", "--ppn", "4", "--depth=8", "--cpu-bind"]
    assert words[7] == "depth" and words[8:10] == ["bash", "-c"]  # the GPU wrapper
    assert words[11:] == ["gpu-affinity", "hvd-stgnn", "train", "--threads", "8", "--data", "x.h5"]
    assert "2 node(s) x 4 = 8 rank(s), 8 thread(s) per rank, GPU affinity: reverse" in r.stderr
    # A nodefile that lists a host once per core still counts nodes; flags imply `hvd-stgnn train`.
    nodes = _nodefile(tmp_path, "a", "a", "b", "b", "c")
    assert _dry("pbs_polaris.sh", "--data", "x.h5", PBS_NODEFILE=nodes, GPU_AFFINITY="none", RANKS_PER_NODE="2") == (
        "mpiexec -n 6 --ppn 2 --depth=8 --cpu-bind depth hvd-stgnn train --threads 8 --data x.h5")


def test_pbs_command_from_qsub_variables(tmp_path):
    nodes = _nodefile(tmp_path, "a")
    pbs = {"PBS_NODEFILE": nodes, "GPUS_PER_NODE": "0"}
    assert _dry("pbs_polaris.sh", ARGS="--data x.h5 --epochs 2", **pbs).endswith(
        "--cpu-bind depth hvd-stgnn train --threads 8 --data x.h5 --epochs 2")
    assert _dry("pbs_polaris.sh", CMD="hvd-stgnn bench models", **pbs).endswith("--cpu-bind depth hvd-stgnn bench models")
    r = _run("pbs_polaris.sh", "true", DRY_RUN="1", GPU_AFFINITY="sideways", **pbs)
    assert r.returncode == 2 and "GPU_AFFINITY" in r.stderr
    r = _run("pbs_polaris.sh", "true")
    assert r.returncode == 2 and "PBS_NODEFILE" in r.stderr


@pytest.mark.parametrize("affinity,gpus", [("reverse", ["3", "2", "1", "0"]), ("direct", ["0", "1", "2", "3"])])
def test_pbs_gpu_wrapper_gives_each_local_rank_one_gpu(tmp_path, affinity, gpus):
    # A stand-in for PALS mpiexec: runs the command once per local rank of one node.
    path = _fake_launcher(tmp_path / "bin", "mpiexec", """
ppn=1
while [ "$#" -gt 0 ]; do
    case "$1" in --ppn) ppn=$2; shift 2 ;; -n|--cpu-bind) shift 2 ;; --depth=*) shift ;; *) break ;; esac
done
for ((r = 0; r < ppn; r++)); do PMI_LOCAL_RANK=$r "$@" || exit; done
""")
    r = _run("pbs_polaris.sh", "sh", "-c", 'echo "gpu=$CUDA_VISIBLE_DEVICES threads=$OMP_NUM_THREADS"', PATH=path,
             PBS_NODEFILE=_nodefile(tmp_path, "a"), GPU_AFFINITY=affinity)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [x for g in gpus for x in (f"gpu={g}", "threads=8")]


# ---- horovodrun.sh ----------------------------------------------------------------------------


def test_horovodrun_line(tmp_path):
    assert _dry("horovodrun.sh", "-np", "4", "hvd-stgnn", "train") == "horovodrun -np 4 -H localhost:4 --mpi hvd-stgnn train"
    assert _dry("horovodrun.sh", "-H", "n1:4,n2:4", "hvd-stgnn", "train", "--data", "x.h5") == (
        "horovodrun -np 8 -H n1:4,n2:4 --mpi hvd-stgnn train --data x.h5")
    hostfile = tmp_path / "hosts"
    hostfile.write_text("n1 slots=2\n# spare\nn2 slots=2\n")
    assert _dry("horovodrun.sh", "-hostfile", str(hostfile), "true") == f"horovodrun -np 4 -hostfile {hostfile} --mpi true"
    assert _dry("horovodrun.sh", "-np", "2", "hvd-stgnn", "train", MPIRUN_ARGS="--report-bindings",
                OMP_NUM_THREADS="1") == (
        "horovodrun -np 2 -H localhost:2 --mpi --mpi-args=--report-bindings hvd-stgnn train --threads 1")
    r = _run("horovodrun.sh", "-np", "0", "true", DRY_RUN="1")
    assert r.returncode == 2 and "-np must be a positive integer" in r.stderr


@pytest.mark.mpi
def test_horovodrun_launches_two_ranks():
    code = ("import os, horovod.torch as hvd; hvd.init(); "
            "os.write(1, f'rank {hvd.rank()} of {hvd.size()} threads {os.environ[\"OMP_NUM_THREADS\"]}\\n'.encode())")
    r = _run("horovodrun.sh", "-np", "2", sys.executable, "-c", code)
    assert r.returncode == 0, r.stdout + r.stderr
    threads = max(1, CORES // 2)
    for rank in (0, 1):
        assert f"rank {rank} of 2 threads {threads}" in r.stdout, r.stdout


# ---- stopping and resuming (slurm.sbatch and pbs_polaris.sh alike) ----------------------------

CLUSTER = {"slurm.sbatch": {"SLURM_CPUS_PER_TASK": "1"}, "pbs_polaris.sh": {"GPUS_PER_NODE": "0"}}


@pytest.mark.parametrize("script", sorted(CLUSTER))
def test_cluster_scripts_resume_auto_when_there_is_a_run_dir(tmp_path, script):
    env = {**CLUSTER[script], "PBS_NODEFILE": _nodefile(tmp_path, "a")}
    train = ["hvd-stgnn", "train", "--data", "x.h5"]
    words = shlex.split(_dry(script, *train, "--run-dir", "runs/a", **env))
    assert words[words.index("train"):][:3] == ["train", "--resume", "auto"]
    for given in (["--resume", "runs/b"], ["--resume=runs/b"], ["--overwrite"]):
        assert "auto" not in shlex.split(_dry(script, *train, "--run-dir", "runs/a", *given, **env))
    assert "--resume" not in _dry(script, *train, **env)  # no run dir: nothing to resume from
    assert "--resume" not in _dry(script, "python", "train.py", "--run-dir", "x", **env)  # not our trainer


@pytest.mark.parametrize("script,launcher", [("slurm.sbatch", "srun"), ("pbs_polaris.sh", "mpiexec")])
@pytest.mark.parametrize("sig", ["SIGUSR1", "SIGTERM"])
def test_cluster_scripts_forward_a_stop_signal_to_the_ranks(tmp_path, script, launcher, sig):
    """The batch script gets SIGUSR1 (`--signal=B:USR1@120`, `scancel --batch`) or SIGTERM; the
    ranks get SIGTERM (Slurm: through `scancel --signal=TERM JOB`, never srun's own SIGTERM,
    which srun turns into SIGKILL of its tasks) and the script exits with their status."""
    import signal

    pidfile, scancel_args = tmp_path / "launcher.pid", tmp_path / "scancel.args"
    path = _fake_launcher(tmp_path / "bin", launcher, f"""
trap 'echo "ranks got TERM"; exit 143' TERM
echo $$ > {pidfile}
for i in $(seq 600); do sleep 0.1; done
""")
    _fake_launcher(tmp_path / "bin", "scancel", f'echo "$*" > {scancel_args}; kill -TERM "$(cat {pidfile})"\n')
    env = _env(PATH=path, SLURM_JOB_ID="42", PBS_NODEFILE=_nodefile(tmp_path, "a"), **CLUSTER[script])
    proc = subprocess.Popen(["bash", str(JOBS / script), "true"], env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            if pidfile.exists() and pidfile.read_text().strip():
                break
            time.sleep(0.1)
        proc.send_signal(getattr(signal, sig))
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143, out + err
    assert "ranks got TERM" in out and f"{sig}" in err and "asking the ranks to checkpoint and stop" in err
    if script == "slurm.sbatch":
        assert scancel_args.read_text().split() == ["--signal=TERM", "42"]


# ---- GPUs per node against ranks per node (slurm.sbatch and pbs_polaris.sh) -------------------

SLURM_JOB = {"SLURM_JOB_ID": "42", "SLURM_CPUS_PER_TASK": "1"}


def _refused_before_launch(tmp_path, script, launcher, *args, **env):
    """Run `script` for real (not DRY_RUN) with a launcher that leaves a marker: exit 2, one
    line on stderr (besides the scripts' notes), nothing launched. Returns that line."""
    marker = tmp_path / "launched"
    path = _fake_launcher(tmp_path / "bin", launcher, f"touch {marker}\n")
    r = _run(script, *args, PATH=path, **env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert not marker.exists() and r.stdout == ""
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, r.stderr
    return errors[0]


@pytest.mark.parametrize("gpus", [{"SLURM_GPUS_ON_NODE": "4"}, {"SLURM_GPUS_PER_NODE": "4"},
                                  {"SLURM_GPUS_PER_NODE": "a100:4"}, {"SLURM_GPUS_PER_NODE": "gpu:a100:2,gpu:v100:2"}])
@pytest.mark.parametrize("ranks", [{"SLURM_NTASKS_PER_NODE": "8"}, {"SLURM_TASKS_PER_NODE": "8(x2)"},
                                   {"SLURM_TASKS_PER_NODE": "4,8"}])
def test_slurm_refuses_more_ranks_than_gpus_per_node(tmp_path, gpus, ranks):
    line = _refused_before_launch(tmp_path, "slurm.sbatch", "srun", "hvd-stgnn", "train", "--data", "x.h5",
                                  **SLURM_JOB, **gpus, **ranks)
    assert line.startswith("jobs/slurm.sbatch: error: 8 ranks per node but only 4 GPUs per node: ")
    assert "--ntasks-per-node=4" in line
    # DRY_RUN checks it too: no launch line.
    r = _run("slurm.sbatch", "--data", "x.h5", DRY_RUN="1", SLURM_CPUS_PER_TASK="1", **gpus, **ranks)
    assert r.returncode == 2 and r.stdout == "" and "8 ranks per node but only 4 GPUs per node" in r.stderr


@pytest.mark.parametrize("env,args", [
    ({"SLURM_NTASKS_PER_NODE": "4", "SLURM_GPUS_ON_NODE": "4"}, []),              # one rank per GPU
    ({"SLURM_NTASKS_PER_NODE": "2", "SLURM_GPUS_PER_NODE": "4"}, []),             # GPUs to spare
    ({"SLURM_NTASKS_PER_NODE": "8"}, []),                                         # a CPU-only job
    ({"SLURM_NTASKS_PER_NODE": "8", "SLURM_GPUS_PER_NODE": "0"}, []),             # --gpus-per-node=0
    ({"SLURM_NTASKS_PER_NODE": "8", "SLURM_GPUS_ON_NODE": "4"}, ["--device", "cpu"]),   # CPU training
    ({"SLURM_NTASKS_PER_NODE": "8", "SLURM_GPUS_ON_NODE": "4"}, ["--device=cpu"]),
    ({"SLURM_NTASKS_PER_NODE": "8", "SLURM_GPUS_ON_NODE": "4", "ALLOW_GPU_SHARING": "1"}, []),
])
def test_slurm_gpu_check_lets_these_through(env, args):
    r = _run("slurm.sbatch", "hvd-stgnn", "train", "--data", "x.h5", *args, DRY_RUN="1", SLURM_CPUS_PER_TASK="1", **env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("srun ")
    gpus = env.get("SLURM_GPUS_ON_NODE") or env.get("SLURM_GPUS_PER_NODE", "0")
    assert (f"{gpus} GPU(s) per node" if gpus != "0" else "no GPUs") in r.stderr


def test_slurm_gpu_check_reads_the_last_device_flag(tmp_path):
    line = _refused_before_launch(tmp_path, "slurm.sbatch", "srun", "hvd-stgnn", "train", "--device", "cpu",
                                  "--device", "cuda", **SLURM_JOB, SLURM_NTASKS_PER_NODE="2", SLURM_GPUS_ON_NODE="1")
    assert "2 ranks per node but only 1 GPUs per node" in line


def test_pbs_refuses_more_ranks_than_gpus_per_node(tmp_path):
    nodes = _nodefile(tmp_path, "a", "b")
    # The node's GPUs as nvidia-smi lists them (2 here) against the default 4 ranks per node.
    line = _refused_before_launch(tmp_path, "pbs_polaris.sh", "mpiexec", "--data", "x.h5", PBS_NODEFILE=nodes,
                                  FAKE_GPUS="2")
    assert line.startswith("jobs/pbs_polaris.sh: error: 4 ranks per node but only 2 GPUs per node: ")
    assert "RANKS_PER_NODE=2" in line and "nvidia-smi -L" in line
    # RANKS_PER_NODE above GPUS_PER_NODE (given), also under DRY_RUN and with GPU_AFFINITY=none
    # (every rank sees every GPU, and --device auto would still double up).
    for affinity in ("reverse", "direct", "none"):
        r = _run("pbs_polaris.sh", "--data", "x.h5", DRY_RUN="1", PBS_NODEFILE=nodes, RANKS_PER_NODE="8",
                 GPUS_PER_NODE="4", GPU_AFFINITY=affinity)
        assert r.returncode == 2 and r.stdout == "", r.stderr
        assert "8 ranks per node but only 4 GPUs per node" in r.stderr


def test_pbs_gpus_per_node_comes_from_the_node(tmp_path):
    pbs = {"PBS_NODEFILE": _nodefile(tmp_path, "a")}
    # Two GPUs listed, two ranks: one each, the wrapper counts modulo 2.
    r = _run("pbs_polaris.sh", "--data", "x.h5", DRY_RUN="1", FAKE_GPUS="2", RANKS_PER_NODE="2", **pbs)
    assert r.returncode == 0, r.stderr
    assert "export CUDA_VISIBLE_DEVICES=$((1 - r % 2))" in r.stdout
    assert "2 GPU(s) per node (nvidia-smi -L)" in r.stderr
    # nvidia-smi there but no GPU listed: a note, and Polaris' 4.
    r = _run("pbs_polaris.sh", "--data", "x.h5", DRY_RUN="1", FAKE_GPUS="0", **pbs)
    assert r.returncode == 0, r.stderr
    assert "nvidia-smi lists no GPU" in r.stderr and "4 GPU(s) per node (Polaris default)" in r.stderr
    # GPUS_PER_NODE wins over nvidia-smi; 0 is a CPU-only job with any number of ranks.
    assert "3 GPU(s) per node (GPUS_PER_NODE)" in _run("pbs_polaris.sh", "true", DRY_RUN="1", GPUS_PER_NODE="3",
                                                       RANKS_PER_NODE="3", **pbs).stderr
    r = _run("pbs_polaris.sh", "true", DRY_RUN="1", GPUS_PER_NODE="0", RANKS_PER_NODE="32", DEPTH="1", **pbs)
    assert r.returncode == 0 and "no GPUs" in r.stderr and r.stdout.startswith("mpiexec -n 32 --ppn 32 ")


@pytest.mark.skipif(any(Path(d, "nvidia-smi").exists() for d in ("/usr/bin", "/bin")),
                    reason="this machine has a real nvidia-smi in /usr/bin")
def test_pbs_without_nvidia_smi_assumes_polaris(tmp_path):
    env = {k: v for k, v in _env(DRY_RUN="1", PBS_NODEFILE=_nodefile(tmp_path, "a")).items()}
    env["PATH"] = "/usr/bin:/bin"  # no stand-in, no nvidia-smi: a login node
    r = subprocess.run(["bash", str(JOBS / "pbs_polaris.sh"), "true"], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "4 GPU(s) per node (Polaris default)" in r.stderr and "nvidia-smi" not in r.stderr


@pytest.mark.parametrize("args,env", [
    (["hvd-stgnn", "train", "--data", "x.h5", "--device", "cpu"], {"RANKS_PER_NODE": "8"}),
    (["hvd-stgnn", "train", "--data", "x.h5"], {"RANKS_PER_NODE": "8", "ALLOW_GPU_SHARING": "1"}),
])
def test_pbs_gpu_check_lets_these_through(tmp_path, args, env):
    r = _run("pbs_polaris.sh", *args, DRY_RUN="1", PBS_NODEFILE=_nodefile(tmp_path, "a"), **env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("mpiexec -n 8 --ppn 8 ")


# ---- MPI thread level and NCCL knobs ----------------------------------------------------------


def test_pbs_asks_cray_mpich_for_thread_multiple(tmp_path):
    nodes = _nodefile(tmp_path, "a")
    # DRY_RUN: the job log line lists it among the settings in effect; yours is kept.
    r = _run("pbs_polaris.sh", "--data", "x.h5", DRY_RUN="1", PBS_NODEFILE=nodes)
    assert r.returncode == 0 and "MPICH_MAX_THREAD_SAFETY=multiple" in r.stderr.split(";")[-1], r.stderr
    r = _run("pbs_polaris.sh", "--data", "x.h5", DRY_RUN="1", PBS_NODEFILE=nodes, MPICH_MAX_THREAD_SAFETY="funneled",
             NCCL_DEBUG="INFO")
    assert "MPICH_MAX_THREAD_SAFETY=funneled" in r.stderr and "multiple" not in r.stderr
    assert "NCCL_DEBUG=INFO" in r.stderr
    # For real: exported to mpiexec and so to every rank.
    path = _fake_launcher(tmp_path / "bin", "mpiexec", 'echo "mpich=$MPICH_MAX_THREAD_SAFETY nccl=${NCCL_DEBUG:-}"\n')
    r = _run("pbs_polaris.sh", "true", PATH=path, PBS_NODEFILE=nodes, NCCL_DEBUG="INFO")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "mpich=multiple nccl=INFO"


def test_slurm_lists_nccl_knobs_in_the_job_log():
    r = _run("slurm.sbatch", "--data", "x.h5", DRY_RUN="1", SLURM_CPUS_PER_TASK="1", NCCL_DEBUG="INFO",
             NCCL_SOCKET_IFNAME="ib0")
    assert r.returncode == 0 and "NCCL_DEBUG=INFO NCCL_SOCKET_IFNAME=ib0" in r.stderr, r.stderr
    assert "MPICH_MAX_THREAD_SAFETY" not in r.stderr  # a Cray MPICH matter: PBS/Polaris only


def test_the_cluster_scripts_keep_their_copies_of_the_helpers_the_same():
    """slurm.sbatch and pbs_polaris.sh cannot source jobs/common.sh (the scheduler runs a
    spooled copy), so they carry copies: of common.sh's helpers, and of each other's."""
    import re

    def functions(path):
        text = path.read_text()
        found = {m.group(1): m.group(0)
                 for m in re.finditer(r"^(\w+)\(\) \{[ \t]*(?:#[^\n]*)?\n.*?^\}$", text, re.S | re.M)}
        found.update({m.group(1): m.group(0) for m in re.finditer(r"^(\w+)\(\) \{.*\}$", text, re.M)})
        return found

    common = functions(JOBS / "common.sh")
    slurm, pbs = functions(JOBS / "slurm.sbatch"), functions(JOBS / "pbs_polaris.sh")
    for name in ("quote_words", "jemalloc_prefix", "add_threads_flag", "is_dry_run"):
        assert slurm[name] == common[name] == pbs[name], name
    for name in ("add_resume_flag", "train_device", "gpu_sharing_check", "run_forwarding_stop"):
        assert slurm[name] == pbs[name], name
