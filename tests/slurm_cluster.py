"""A private one-node Slurm cluster for tests: munged, slurmctld and slurmd started as root
from a config written into a temporary directory (free ports, its own munge key and socket,
no cgroups: proctrack/linuxproc, task/none), and stopped again by the pids it recorded.

    cluster = Cluster.start()      # or: skip_reason() first
    env = cluster.env              # os.environ with SLURM_CONF set: for sbatch, squeue, ...
    cluster.stop()                 # cancels its jobs, kills its daemons, removes its dirs
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time

DAEMONS = ('munged', 'slurmctld', 'slurmd')
CLIENTS = ('sbatch', 'srun', 'squeue', 'scancel', 'sinfo')

CONF = """\
ClusterName=diffgentest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/sock
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=30
MinJobAge=2
FirstJobId={first_job_id}
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=16000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""


def skip_reason():
    """Why no private cluster can start here (None if one can)."""
    missing = [p for p in DAEMONS + CLIENTS if shutil.which(p) is None]
    if missing:
        return f'Slurm not installed (no {", ".join(missing)}; apt-get install slurm-wlm)'
    if os.geteuid() != 0:
        return 'the private Slurm cluster runs its daemons as root; not root here'
    return None


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Cluster:

    def __init__(self, root):
        self.root = root
        self.conf = os.path.join(root, 'slurm.conf')
        self.env = dict(os.environ, SLURM_CONF=self.conf)
        for key in [k for k in self.env if k.startswith(('SLURM_', 'SBATCH_', 'SRUN_'))]:
            if key != 'SLURM_CONF':
                del self.env[key]   # this process inside some other job: not ours
        self.pids = {}

    @classmethod
    def start(cls, timeout=60):
        root = tempfile.mkdtemp(prefix='diffgen_slurm_', dir='/tmp')  # short socket paths
        cluster = cls(root)
        try:
            cluster._start(timeout)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _start(self, timeout):
        root = self.root
        for sub in ('munge', 'state', 'spool', 'log'):
            os.makedirs(os.path.join(root, sub), mode=0o700)
        key = os.path.join(root, 'munge', 'key')
        with open(key, 'wb') as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o400)
        with open(self.conf, 'w') as f:
            # a job id of its own: JAX's Slurm coordinator port is derived from it, and
            # another cluster on this machine counts from 1
            f.write(CONF.format(host=socket.gethostname(), root=root, ctld_port=free_port(),
                                d_port=free_port(), cpus=os.cpu_count() or 1,
                                first_job_id=random.randrange(10_000, 1_000_000)))
        munge = os.path.join(root, 'munge')
        self._daemon('munged', ['munged', '--force', f'--key-file={key}',
                                f'--socket={munge}/sock', f'--pid-file={munge}/pid',
                                f'--log-file={munge}/log', f'--seed-file={munge}/seed'],
                     f'{munge}/pid')
        self._daemon('slurmctld', ['slurmctld', '-i', '-f', self.conf],
                     os.path.join(root, 'slurmctld.pid'))
        self._daemon('slurmd', ['slurmd', '-f', self.conf], os.path.join(root, 'slurmd.pid'))
        deadline = time.monotonic() + timeout
        state = ''
        while time.monotonic() < deadline:
            out = subprocess.run(['sinfo', '-h', '-o', '%T'], env=self.env, capture_output=True,
                                 text=True, timeout=30)
            state = out.stdout.strip() + out.stderr.strip()
            if out.returncode == 0 and state in ('idle', 'mixed', 'allocated'):
                return
            time.sleep(0.5)
        raise RuntimeError(f'the test Slurm cluster did not come up (sinfo: {state!r}):\n'
                           + self.logs())

    def _daemon(self, name, argv, pid_file):
        """Starts a daemon (it forks into the background) and records its pid."""
        result = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f'{name} failed to start: {result.stderr}{result.stdout}\n'
                               + self.logs())
        for _ in range(100):
            try:
                with open(pid_file) as f:
                    self.pids[name] = int(f.read().split()[0])
                return
            except (FileNotFoundError, IndexError, ValueError):
                time.sleep(0.1)
        raise RuntimeError(f'{name} wrote no pid file {pid_file}\n' + self.logs())

    def logs(self, tail=3000):
        text = []
        for name in ('log/slurmctld.log', 'log/slurmd.log', 'munge/log'):
            try:
                with open(os.path.join(self.root, name), errors='replace') as f:
                    text.append(f'--- {name}:\n' + f.read()[-tail:])
            except FileNotFoundError:
                pass
        return '\n'.join(text)

    def run(self, *argv, check=True, timeout=60):
        """A Slurm client command against this cluster (CompletedProcess)."""
        result = subprocess.run(argv, env=self.env, capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f'{argv}: exit {result.returncode}: {result.stderr}')
        return result

    def stop(self):
        """Cancels every job, stops the daemons it started (by their pids) and removes its
        directory."""
        if 'slurmd' in self.pids and 'slurmctld' in self.pids:
            try:
                self.run('scancel', '--full', '-u', 'root', check=False)
                for _ in range(60):   # slurmd signals the job steps (SIGTERM, then SIGKILL)
                    if not self.run('squeue', '-h', check=False).stdout.strip():
                        break
                    time.sleep(1)
            except (OSError, subprocess.SubprocessError):
                pass
        for name in reversed(DAEMONS):
            pid = self.pids.pop(name, None)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(self.root, ignore_errors=True)
