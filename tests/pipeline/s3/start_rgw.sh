#!/usr/bin/env bash
# Start a real S3-compatible object store on 127.0.0.1: Ceph's RADOS Gateway over one monitor and one
# in-memory OSD (no authentication inside the cluster, loopback only). Recipe: shared/notes/environment.md.
#
# Usage: start_rgw.sh DIR
#   Everything (config, mon/osd data, logs, pid files) lives under DIR. On success DIR/s3.env holds
#   AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for a ready user; stop with stop_rgw.sh DIR.
#   Installs the Debian packages when missing (CI machines start fresh; needs root). The in-memory OSD
#   holds RGW_MEMSTORE_BYTES (default 1 GiB): raise it to store more.
set -euo pipefail

DIR=$(mkdir -p "$1" && cd "$1" && pwd)
PACKAGES=(ceph-mon ceph-osd radosgw)

if ! command -v radosgw > /dev/null || ! command -v ceph-osd > /dev/null || ! command -v ceph-mon > /dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" > "$DIR/apt.log" 2>&1 \
    || { apt-get update -q >> "$DIR/apt.log" 2>&1 && apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >> "$DIR/apt.log" 2>&1; } \
    || { tail -20 "$DIR/apt.log" >&2; echo "start_rgw: could not install ${PACKAGES[*]}" >&2; exit 1; }
fi

# A daemon that refuses to start exits quietly with its reason in its log: show the logs before exiting.
trap 'status=$?; echo "start_rgw: line $LINENO exited $status" >&2; df -h "$DIR" >&2; tail -n 20 "$DIR"/log/*.log "$DIR"/log/daemons.err >&2 2> /dev/null; exit $status' ERR

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
MON_PORT=$(free_port)
RGW_PORT=$(free_port)
FSID=$(python3 -c 'import uuid; print(uuid.uuid4())')
CONF="$DIR/ceph.conf"
mkdir -p "$DIR"/{mon,osd,run,log,rgw}

cat > "$CONF" << CONF
[global]
fsid = $FSID
mon host = v2:127.0.0.1:$MON_PORT
mon initial members = a
run dir = $DIR/run
admin socket = $DIR/run/\$name.asok
pid file = $DIR/run/\$name.pid
log file = $DIR/log/\$name.log
auth cluster required = none
auth service required = none
auth client required = none
# Required with auth none, or radosgw loops on get_initial_auth:
ms mon client mode = crc secure
ms client mode = crc secure
ms mon cluster mode = crc secure
ms mon service mode = crc secure
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool size one = true
mon warn on pool no redundancy = false
# The monitor refuses to start below 5% free disk (exit 28, nothing on stderr); this throwaway
# cluster's OSD is in memory, so a full build disk must not stop it:
mon data avail crit = 0
mon data avail warn = 0
osd crush chooseleaf type = 0
[mon.a]
mon data = $DIR/mon
[osd.0]
osd data = $DIR/osd
osd objectstore = memstore
memstore device bytes = ${RGW_MEMSTORE_BYTES:-1073741824}
[client.rgw]
rgw data = $DIR/rgw
rgw frontends = beast endpoint=127.0.0.1:$RGW_PORT
CONF

monmaptool --create --fsid "$FSID" --addv a "[v2:127.0.0.1:$MON_PORT]" "$DIR/monmap" > /dev/null
ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/monmap"
ceph-mon -c "$CONF" -i a 2>> "$DIR/log/daemons.err"
OSD_ID=$(ceph -c "$CONF" osd create)
ceph-osd -c "$CONF" -i "$OSD_ID" --mkfs 2>> "$DIR/log/daemons.err"
ceph-osd -c "$CONF" -i "$OSD_ID" 2>> "$DIR/log/daemons.err"
radosgw -c "$CONF" -n client.rgw 2>> "$DIR/log/daemons.err"

ENDPOINT="http://127.0.0.1:$RGW_PORT"
for _ in $(seq 120); do
  if python3 -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$ENDPOINT" 2> /dev/null; then
    break
  fi
  sleep 0.5
done
python3 -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$ENDPOINT" \
  || { tail -20 "$DIR/log/client.rgw.log" >&2; echo "start_rgw: radosgw did not answer on $ENDPOINT" >&2; exit 1; }

ACCESS_KEY=anonbench-test
SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(20))')
radosgw-admin -c "$CONF" user create --uid anonbench --display-name anonbench \
  --access-key "$ACCESS_KEY" --secret-key "$SECRET_KEY" > /dev/null
printf 'AWS_ENDPOINT_URL=%s\nAWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\n' "$ENDPOINT" "$ACCESS_KEY" "$SECRET_KEY" \
  > "$DIR/s3.env"
echo "radosgw ready on $ENDPOINT"
