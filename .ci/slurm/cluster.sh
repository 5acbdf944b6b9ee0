#!/usr/bin/env bash
# The project's loopback SLURM test cluster: Debian's slurm packages, emulated nodes on 127.0.0.1, fake GPUs.
#
#   cluster.sh start         install the packages if missing (root, apt), write the config, start the daemons
#   cluster.sh stop          cancel the jobs, stop the daemons this script started (by pid file), unlink the config
#   cluster.sh status        daemons, nodes and queue; exit 0 when up, 3 when down
#   cluster.sh check         one sbatch job, one 2-task srun, one 2-node srun, fake-GPU binding
#   cluster.sh profile DIR   write a Snakemake profile for this cluster to DIR/config.yaml
#
# Settings: EDM2LIB_SLURM_DIR (state, default /tmp/edm2lib-slurm), EDM2LIB_SLURM_NODES (emulated nodes, 2),
# EDM2LIB_SLURM_GPUS (fake GPUs per node, 2), EDM2LIB_SLURM_PORT (controller port, 17817; node i uses PORT+i).
# Outside the state directory it writes only the symlink /etc/slurm/slurm.conf (Snakemake's SLURM job-step
# executor drops SLURM_CONF from the environment, so srun inside a job must find the config at its default path)
# and one marked /etc/hosts line that resolves the node names to 127.0.0.1 (a DDP job's ranks meet at the first
# node of SLURM_JOB_NODELIST, as on a real cluster); stop removes both.
set -euo pipefail

dir=${EDM2LIB_SLURM_DIR:-/tmp/edm2lib-slurm}
nodes=${EDM2LIB_SLURM_NODES:-2}
gpus=${EDM2LIB_SLURM_GPUS:-2}
port=${EDM2LIB_SLURM_PORT:-17817}
partition=ci
conf=$dir/slurm.conf
link=/etc/slurm/slurm.conf
socket=$dir/munge/socket
export SLURM_CONF=$conf

say() { echo "cluster.sh: $*" >&2; }
fail() { say "$*"; exit 1; }

node_names() { seq -f "cinode%g" 1 "$nodes"; }
pid_files() { for n in $(node_names); do echo "$dir/pid/slurmd-$n"; done; echo "$dir/pid/slurmctld" "$dir/pid/munged"; }

# A pid counts as ours only while it lives and its command line names our state directory.
is_ours() {
    local pid=$1
    [[ -n $pid && -r /proc/$pid/cmdline ]] || return 1
    [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$dir"
}
pid_of() { [[ -s $1 ]] && tr -dc 0-9 <"$1"; true; }

retry() { # retry SECONDS COMMAND...: until it succeeds, every half second
    local until=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do ((SECONDS < until)) || return 1; sleep 0.5; done
}
controller_up() { scontrol ping | grep -q UP; }
all_idle() { [[ $(sinfo -h -o %T | sort -u) == idle ]]; }
queue_empty() { [[ -z $(squeue -h) ]]; }

install() {
    local b
    for b in slurmctld slurmd srun sbatch squeue scontrol munged; do
        command -v "$b" >/dev/null || break
    done
    command -v "$b" >/dev/null && return 0
    [[ $(id -u) == 0 ]] || fail "SLURM is not installed; as root run: apt-get install slurmctld slurmd slurm-client munge"
    command -v apt-get >/dev/null || fail "no apt-get: install slurmctld, slurmd, slurm-client and munge by hand"
    say "installing slurmctld slurmd slurm-client munge"
    # Debian's maintainer scripts would try to start the services; a deny-all policy-rc.d stops that.
    local policy=/usr/sbin/policy-rc.d added=0
    [[ -e $policy ]] || { printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"; added=1; }
    local rc=0
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge; } >"$dir.apt.log" 2>&1 || rc=$?
    ((added)) && rm -f "$policy"
    ((rc == 0)) || { tail -5 "$dir.apt.log" >&2; fail "apt-get failed (log: $dir.apt.log)"; }
}

write_config() {
    local host cpus mem gres=""
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(($(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) / 2 / nodes))
    rm -rf "$dir/spool" "$dir/log" "$dir/pid"
    mkdir -p "$dir"/{spool,log,pid,munge,key,dev}
    chmod 755 "$dir" "$dir/munge"
    chmod 700 "$dir/key"
    # Fake GPUs: SLURM only accepts device files for a gpu GRES; /dev/null's numbers (1, 3) will do.
    local i
    for ((i = 0; i < gpus; i++)); do
        [[ -c $dir/dev/gpu$i ]] || mknod -m 666 "$dir/dev/gpu$i" c 1 3 || fail "mknod failed: run as root"
    done
    ((gpus > 0)) && gres="Gres=gpu:fake:$gpus"
    cat >"$conf" <<CONF
# Loopback test cluster written by .ci/slurm/cluster.sh (not for production).
ClusterName=edm2lib-ci
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$socket
StateSaveLocation=$dir/spool/ctld
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/pid/slurmctld
SlurmdPidFile=$dir/pid/slurmd-%n
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
# No cgroups and no accounting daemon: plain process tracking; job states from squeue (kept 10 min).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MinJobAge=600
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
KillWait=10
MailProg=/bin/true
GresTypes=gpu
CONF
    i=0
    for n in $(node_names); do
        i=$((i + 1))
        echo "NodeName=$n NodeHostname=$host NodeAddr=127.0.0.1 Port=$((port + i)) CPUs=$cpus RealMemory=$mem $gres State=UNKNOWN"
    done >>"$conf"
    echo "PartitionName=$partition Nodes=ALL Default=YES MaxTime=INFINITE State=UP" >>"$conf"
    {
        echo "AutoDetect=off"
        ((gpus > 0)) && for n in $(node_names); do echo "NodeName=$n Name=gpu Type=fake File=$dir/dev/gpu[0-$((gpus - 1))]"; done
        true
    } >"$dir/gres.conf"
    for n in $(node_names); do mkdir -p "$dir/spool/$n"; done
    mkdir -p "$dir/spool/ctld"
    [[ -s $dir/key/munge.key ]] || head -c 1024 /dev/urandom >"$dir/key/munge.key"
    chmod 400 "$dir/key/munge.key"
}

link_config() {
    mkdir -p /etc/slurm
    if [[ -L $link && ! -e $link ]]; then rm -f "$link"; fi
    if [[ -e $link || -L $link ]]; then
        [[ $(readlink "$link") == "$conf" ]] || fail "$link exists and is not ours; remove it or stop its cluster"
        return 0
    fi
    ln -s "$conf" "$link"
}

hosts_mark="# edm2lib-ci-slurm"
add_hosts() {
    grep -qF "$hosts_mark" /etc/hosts || echo "127.0.0.1 $(node_names | tr '\n' ' ')$hosts_mark" >>/etc/hosts
}
remove_hosts() {
    local kept
    grep -qF "$hosts_mark" /etc/hosts || return 0
    kept=$(grep -vF "$hosts_mark" /etc/hosts)
    printf '%s\n' "$kept" >/etc/hosts # rewrite in place: /etc/hosts may be a bind mount
}

start() {
    [[ $(id -u) == 0 ]] || fail "must run as root (mknod, /etc/slurm/slurm.conf, daemons)"
    local t0=$SECONDS
    mkdir -p "$dir"
    status >/dev/null 2>&1 && { say "already running"; return 0; }
    stop_daemons
    install
    write_config
    link_config
    add_hosts
    munged --socket="$socket" --key-file="$dir/key/munge.key" --pid-file="$dir/pid/munged" \
        --log-file="$dir/log/munged.log" --seed-file="$dir/key/seed" || fail "munged did not start"
    retry 10 test -S "$socket" || fail "no munge socket at $socket"
    slurmctld -f "$conf" -i || fail "slurmctld did not start"
    retry 20 controller_up || fail "slurmctld does not answer: $(tail -3 "$dir/log/slurmctld.log")"
    local n
    for n in $(node_names); do slurmd -f "$conf" -N "$n" || fail "slurmd $n did not start"; done
    if ! retry 30 all_idle; then
        for n in $(node_names); do scontrol update NodeName="$n" State=RESUME || true; done
        retry 15 all_idle || fail "nodes not idle: $(sinfo -N -h -o '%N %T %E' | tr '\n' ';')"
    fi
    say "up in $((SECONDS - t0)) s: $(sinfo -h -o '%D nodes x %c CPUs, %G')"
}

stop_daemons() {
    [[ -d $dir/pid ]] || return 0
    if is_ours "$(pid_of "$dir/pid/slurmctld")"; then
        scancel --partition="$partition" || true
        retry 20 queue_empty || say "jobs still queued after scancel"
    fi
    local f pid
    for f in $(pid_files); do
        pid=$(pid_of "$f")
        if is_ours "$pid"; then
            kill -TERM "$pid" || true
            retry 15 bash -c "! kill -0 $pid" || kill -KILL "$pid" || true
        fi
        rm -f "$f"
    done
}

stop() {
    stop_daemons
    [[ -L $link && $(readlink "$link") == "$conf" ]] && rm -f "$link"
    remove_hosts
    say "stopped"
}

status() {
    local f down=0
    for f in $(pid_files); do
        if is_ours "$(pid_of "$f")"; then echo "$(basename "$f"): up"; else echo "$(basename "$f"): down"; down=1; fi
    done
    ((down == 0)) || return 3
    sinfo -N -o '%N %T %c %m %G' && squeue
}

check() {
    local tmp job out
    tmp=$(mktemp -d)
    job=$(sbatch --parsable -D "$tmp" -o "$tmp/%j.out" --wrap 'srun -n 1 hostname') || fail "sbatch failed"
    retry 30 queue_empty || fail "job $job did not finish"
    [[ -s $tmp/$job.out ]] || fail "job $job wrote nothing"
    echo "sbatch: ok (job $job)"
    [[ $(timeout 60 srun -n 2 true && echo ok) == ok ]] || fail "srun -n 2 failed"
    echo "srun -n 2: ok"
    if ((nodes >= 2)); then
        out=$(timeout 60 srun -N 2 -n 2 sh -c 'echo $SLURMD_NODENAME' | sort | tr '\n' ' ')
        [[ $out == "cinode1 cinode2 " ]] || fail "srun -N 2 ran on: $out"
        echo "srun -N 2: ok ($out)"
    fi
    for n in $(node_names); do getent hosts "$n" >/dev/null || fail "node name $n does not resolve"; done
    echo "node names resolve: ok"
    if ((gpus >= 2)); then
        out=$(timeout 60 srun -n 2 --gpus-per-task=1 sh -c 'echo $SLURM_PROCID=$CUDA_VISIBLE_DEVICES' | sort | tr '\n' ' ')
        [[ $out == "0=0 1=1 " ]] || fail "fake GPUs bound as: $out"
        echo "fake GPUs: ok ($out)"
    fi
    rm -rf "$tmp"
}

profile() {
    local out=${1:?usage: cluster.sh profile DIR}
    mkdir -p "$out"
    cat >"$out/config.yaml" <<YAML
# Snakemake profile for the loopback cluster of .ci/slurm/cluster.sh
executor: slurm
jobs: 4
latency-wait: 5
printshellcmds: true
show-failed-logs: true
slurm-status-command: squeue      # no accounting daemon here, so no sacct
slurm-no-account: true            # and no accounts to guess
slurm-init-seconds-before-status-checks: 2
slurm-keep-successful-logs: true
default-resources:
  slurm_partition: $partition
  runtime: 10
  mem_mb: 400
YAML
    say "wrote $out/config.yaml"
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    check) check ;;
    profile) profile "${2:-}" ;;
    *) sed -n '2,9p' "$0" | cut -c3-; exit 2 ;;
esac
