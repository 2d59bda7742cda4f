#!/usr/bin/env bash
# Install the AutoSculpt device agent on a board as a system service.
# Tested targets: Raspberry Pi OS 64-bit (Bookworm, Python 3.11) and NVIDIA JetPack 6 (Ubuntu 22.04, Python 3.10).
#
#   sudo ./install-agent.sh [--runtime litert|executorch] [--wheel autosculpt-*.whl] [--python python3]
#                           [--prefix /opt/autosculpt] [--user sculpt] [--no-service]
#
# What it does: checks Python >= 3.10 and the venv module, creates a virtualenv in PREFIX, installs
# 'autosculpt[agent,RUNTIME]' (from --wheel, else from the package index), creates the service user, writes
# /etc/sculpt-agent/agent.toml (loopback only) and the systemd unit sculpt-agent.service, then starts it and
# checks `sculpt-agent info`. The agent listens on 127.0.0.1:50051 only: the host reaches it through SSH
# (`sculpt-host ... --device pi@BOARD`), so no port is opened on the board.
set -euo pipefail

RUNTIME=litert
WHEEL=""
PYTHON=python3
PREFIX=/opt/autosculpt
SVC_USER=sculpt
SERVICE=1

die() { echo "install-agent: $*" >&2; exit 1; }
usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --runtime) RUNTIME="${2:?}"; shift 2 ;;
    --wheel) WHEEL="${2:?}"; shift 2 ;;
    --python) PYTHON="${2:?}"; shift 2 ;;
    --prefix) PREFIX="${2:?}"; shift 2 ;;
    --user) SVC_USER="${2:?}"; shift 2 ;;
    --no-service) SERVICE=0; shift ;;
    -h|--help) usage 0 ;;
    *) echo "unknown argument: $1" >&2; usage 2 ;;
  esac
done

case "$RUNTIME" in litert|executorch) ;; *) die "--runtime must be litert or executorch, not '$RUNTIME'" ;; esac
[ "$(id -u)" = 0 ] || die "run as root: sudo $0 $*"
[ -z "$WHEEL" ] || [ -f "$WHEEL" ] || die "wheel not found: $WHEEL"

# --- which board ---------------------------------------------------------------------------------------------
BOARD=generic
if [ -f /etc/nv_tegra_release ] || [ -d /sys/bus/i2c/drivers/ina3221 ]; then
  BOARD=jetson
elif grep -qi 'raspberry pi' /proc/device-tree/model 2>/dev/null; then
  BOARD=raspberrypi
fi
ARCH="$(uname -m)"
echo "board: $BOARD ($ARCH)"
if [ "$BOARD" = raspberrypi ] && [ "$ARCH" != aarch64 ]; then
  die "32-bit Raspberry Pi OS has no LiteRT/ExecuTorch wheels: install Raspberry Pi OS 64-bit"
fi

# --- Python and venv -----------------------------------------------------------------------------------------
command -v "$PYTHON" >/dev/null || die "$PYTHON not found: apt-get install -y python3 python3-venv"
PYVER="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die \
  "Python $PYVER is too old (need 3.10+). JetPack 5 ships 3.8: upgrade to JetPack 6, or install python3.10 and pass --python python3.10"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || die "the venv module is missing: apt-get install -y python3-venv (or python$PYVER-venv)"

FREE_MB=$(df -Pm "$(dirname "$PREFIX")" | awk 'NR==2 {print $4}')
NEED_MB=400; [ "$RUNTIME" = executorch ] && NEED_MB=2500
[ "$FREE_MB" -ge "$NEED_MB" ] || die "only ${FREE_MB} MB free under $(dirname "$PREFIX"); the $RUNTIME agent needs ~${NEED_MB} MB"

echo "creating the virtualenv $PREFIX (Python $PYVER)"
[ -x "$PREFIX/bin/python" ] || "$PYTHON" -m venv "$PREFIX"
"$PREFIX/bin/python" -m pip install -q --upgrade pip

SPEC="autosculpt[agent,$RUNTIME]"
[ -n "$WHEEL" ] && SPEC="$(readlink -f "$WHEEL")[agent,$RUNTIME]"
if [ "$RUNTIME" = executorch ] && [ "$BOARD" = jetson ]; then
  echo "note: ExecuTorch pulls torch; on Jetson prefer NVIDIA's torch wheel for your JetPack, installed first into $PREFIX"
fi
echo "pip install '$SPEC' (several minutes on a Pi)"
"$PREFIX/bin/python" -m pip install -q "$SPEC"
"$PREFIX/bin/sculpt-agent" --version

if [ "$SERVICE" = 0 ]; then
  echo "installed; start it with: $PREFIX/bin/sculpt-agent serve   (binds 127.0.0.1:50051)"
  exit 0
fi

# --- service user, config, unit ------------------------------------------------------------------------------
if ! id "$SVC_USER" >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/sculpt-agent --shell /usr/sbin/nologin "$SVC_USER"
fi
# Pi 5 power readings (vcgencmd) need the video group; Jetson rails are world-readable.
getent group video >/dev/null && usermod -aG video "$SVC_USER" || true
install -d -o "$SVC_USER" -g "$SVC_USER" /var/lib/sculpt-agent
install -d /etc/sculpt-agent
if [ ! -f /etc/sculpt-agent/agent.toml ]; then
  cat > /etc/sculpt-agent/agent.toml <<'EOF'
# AutoSculpt agent. Loopback only: the host reaches it through SSH. See deploy/agent.example.toml.
host = "127.0.0.1"
port = 50051
store_dir = "/var/lib/sculpt-agent/store"
EOF
fi

cat > /etc/systemd/system/sculpt-agent.service <<EOF
[Unit]
Description=AutoSculpt device agent (model benchmarking over gRPC, loopback only)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User=$SVC_USER
Group=$SVC_USER
Environment=PYTHONUNBUFFERED=1
ExecStart=$PREFIX/bin/sculpt-agent serve --config /etc/sculpt-agent/agent.toml
Restart=on-failure
RestartSec=5
Nice=-5
StateDirectory=sculpt-agent
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ReadWritePaths=/var/lib/sculpt-agent

[Install]
WantedBy=multi-user.target
EOF

systemctl daemon-reload
systemctl enable --now sculpt-agent.service
for _ in $(seq 1 60); do
  systemctl is-active --quiet sculpt-agent.service && break
  sleep 1
done
systemctl is-active --quiet sculpt-agent.service || { journalctl -u sculpt-agent -n 30 --no-pager; die "the service did not start"; }
"$PREFIX/bin/sculpt-agent" info || true
echo
echo "done. From the host:  sculpt-host devices info ${SUDO_USER:-$USER}@$(hostname)"
