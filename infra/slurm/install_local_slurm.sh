#!/usr/bin/env bash
# Installs what tests/support/slurm.py needs to run a real Slurm cluster on localhost: Debian's slurm-wlm (slurmctld,
# slurmd, sbatch, scontrol, ...) and munge (the authentication daemon every Slurm RPC goes through).
# Installs only what is missing: a machine that has slurmctld, slurmd and munged on PATH returns at once.
# Measured on this project's machine kind: ~11 s with a fresh apt index (Debian bookworm/trixie).
# Usage: infra/slurm/install_local_slurm.sh      (root, or a user with sudo)
set -euo pipefail

missing=()
for tool in slurmctld slurmd munged sbatch scontrol; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
# munged lives in /usr/sbin, which a non-login root shell may not have on PATH.
if [ ${#missing[@]} -eq 0 ] || { [ "${missing[*]}" = "munged" ] && [ -x /usr/sbin/munged ]; }; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_local_slurm: missing ${missing[*]} and no apt-get here; install Slurm (slurmctld, slurmd) and" \
       "munge with your package manager" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "install_local_slurm: missing ${missing[*]}; installing slurm-wlm and munge" >&2
$sudo apt-get update -qq
# slurm-wlm: controller, node daemon and client commands; munge: the auth daemon and its key tools.
# No daemon is started here (no systemd in containers); tests/support/slurm.py starts its own, with its own key.
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
for tool in slurmctld slurmd sbatch scontrol; do
  command -v "$tool" >/dev/null 2>&1 || { echo "install_local_slurm: $tool still missing after install" >&2; exit 1; }
done
echo "install_local_slurm: ready ($(slurmctld -V))" >&2
