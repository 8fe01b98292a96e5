#!/usr/bin/env bash
# Build an emulated aarch64 Python runtime for `edgeprune.runtimes.arm64` (issue 5, item 7).
#
# Rootless, no binfmt, nothing under /etc changes. Into a cache directory it puts:
#   qemu/qemu-aarch64   QEMU 10 user mode, from Debian bookworm-backports `qemu-user`
#   sysroot/            Debian bookworm arm64 Python 3.11 and the C/C++ runtime libraries
#   site-packages/      aarch64 wheels of numpy, ai-edge-litert, onnxruntime (+ their deps),
#                       pinned to the host's versions in constraints.txt, unpacked
#   manifest.json       versions and paths; written last and atomically, so a cache without
#                       it is incomplete and is never used
# Re-running on a complete cache checks the manifest and exits at once.
#
# Usage: scripts/make-arm64-runtime.sh [--cache DIR] [--mirror URL] [--security-mirror URL]
#   default cache: ${EDGEPRUNE_ARM64_CACHE:-$HOME/.cache/edgeprune/arm64}
#   default mirrors: the ones this machine's apt uses (else deb.debian.org)
# Emulated timings mean nothing for a device: this runtime checks correctness only.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONSTRAINTS="$REPO/constraints.txt"
CACHE="${EDGEPRUNE_ARM64_CACHE:-$HOME/.cache/edgeprune/arm64}"
MIRROR=""
SECURITY_MIRROR=""
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
PY_SERIES=3.11
SCHEMA=1
# aarch64 runtimes checked correct under QEMU 10 (QEMU's `max` computes int8 wrongly).
SMOKE_CPU=neoverse-n1
# ai-edge-litert 2.x ships only manylinux_2_27_aarch64: without that tag pip silently
# picks 1.x, so every tag is listed explicitly.
PLATFORMS=(--platform manylinux_2_27_aarch64 --platform manylinux_2_28_aarch64
           --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64)
# Packages the sysroot never needs (package-manager and perl closure of the recursion).
SYSROOT_DROP='^(dpkg|debconf.*|install-info|perl|perl-base|perl-modules-.*|libperl.*|libgdbm-compat.*|tar|mailcap|mime-support)$'

log() { printf '[make-arm64-runtime] %s\n' "$*" >&2; }
die() { printf '[make-arm64-runtime] error: %s\n' "$*" >&2; exit 1; }

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --cache) [[ $# -ge 2 ]] || die "--cache needs a directory"; CACHE="$2"; shift 2 ;;
        --cache=*) CACHE="${1#--cache=}"; shift ;;
        --mirror) [[ $# -ge 2 ]] || die "--mirror needs a URL"; MIRROR="$2"; shift 2 ;;
        --mirror=*) MIRROR="${1#--mirror=}"; shift ;;
        --security-mirror) [[ $# -ge 2 ]] || die "--security-mirror needs a URL"; SECURITY_MIRROR="$2"; shift 2 ;;
        --security-mirror=*) SECURITY_MIRROR="${1#--security-mirror=}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1'; see --help" ;;
    esac
done
[[ -n "$CACHE" ]] || die "empty cache directory; pass --cache DIR"
mkdir -p "$CACHE"
CACHE="$(cd "$CACHE" && pwd)"

# ---- host tools ------------------------------------------------------------------------
if [[ -n "${PYTHON:-}" ]]; then HOST_PY="$PYTHON"
elif [[ -x "$REPO/.venv/bin/python" ]]; then HOST_PY="$REPO/.venv/bin/python"
else HOST_PY="$(command -v python3 || true)"; fi
[[ -n "$HOST_PY" && -x "$(command -v "$HOST_PY")" ]] || die "no host python found; set PYTHON=/path/to/python3"

pin() {  # pin NAME -> the version constraints.txt pins
    local v
    v="$(sed -n "s/^$1==\([^ ;#]*\).*/\1/p" "$CONSTRAINTS" | head -n1)"
    [[ -n "$v" ]] || die "$CONSTRAINTS pins no version of '$1'; add '$1==X.Y.Z' (the host's version)"
    printf '%s' "$v"
}
[[ -f "$CONSTRAINTS" ]] || die "constraints file '$CONSTRAINTS' is missing; run from an edgeprune checkout"
NUMPY_V="$(pin numpy)"
LITERT_V="$(pin ai-edge-litert)"
ORT_V="$(pin onnxruntime)"

# ---- fast path: a complete cache for these versions ----------------------------------------
manifest_ok() {
    [[ -f "$CACHE/manifest.json" ]] || return 1
    "$HOST_PY" - "$CACHE" "$SCHEMA" "$NUMPY_V" "$LITERT_V" "$ORT_V" <<'EOF'
import json, os, sys
cache, schema, numpy_v, litert_v, ort_v = sys.argv[1:]
try:
    m = json.load(open(os.path.join(cache, "manifest.json")))
    want = {"numpy": numpy_v, "ai-edge-litert": litert_v, "onnxruntime": ort_v}
    ok = (m["schema"] == int(schema) and all(m["packages"][k] == v for k, v in want.items())
          and os.access(os.path.join(cache, m["qemu"]["path"]), os.X_OK)
          and os.path.isfile(os.path.join(cache, m["python"]["executable"]))
          and os.path.isdir(os.path.join(cache, m["site_packages"])))
except (OSError, ValueError, KeyError, TypeError):
    ok = False
sys.exit(0 if ok else 1)
EOF
}

exec 9>"$CACHE/.lock"
if command -v flock >/dev/null; then flock 9; fi

if manifest_ok; then
    log "up to date: $CACHE (numpy $NUMPY_V, ai-edge-litert $LITERT_V, onnxruntime $ORT_V)"
    exit 0
fi
log "building the aarch64 runtime in $CACHE"
rm -f "$CACHE/manifest.json"   # whatever follows, the cache is not complete until the end

for tool in apt-get apt-cache dpkg dpkg-deb; do
    command -v "$tool" >/dev/null || die "'$tool' not found; this script needs a Debian/Ubuntu host"
done
[[ "$(dpkg --print-architecture)" == amd64 ]] \
    || die "host architecture is '$(dpkg --print-architecture)'; this script emulates aarch64 on amd64 only"
[[ -f "$KEYRING" ]] || die "$KEYRING is missing; install the debian-archive-keyring package"
"$HOST_PY" -m pip --version >/dev/null 2>&1 || die "'$HOST_PY -m pip' does not work; set PYTHON to a python with pip"

# ---- mirrors: the ones this machine's apt uses ------------------------------------------------
system_uris() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f "$f" ]] && sed -n 's/^[[:space:]]*deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\{0,1\}\([^[:space:]]\+\).*/\2/p' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f "$f" ]] && sed -n 's/^URIs:[[:space:]]*//p' "$f" | tr ' ' '\n'
    done
    return 0
}
if [[ -z "$MIRROR" ]]; then
    MIRROR="$(system_uris | grep -E '/debian/?$' | head -n1 || true)"
    MIRROR="${MIRROR:-http://deb.debian.org/debian}"
fi
if [[ -z "$SECURITY_MIRROR" ]]; then
    SECURITY_MIRROR="$(system_uris | grep -E '/debian-security/?$' | head -n1 || true)"
    SECURITY_MIRROR="${SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
fi
MIRROR="${MIRROR%/}"
SECURITY_MIRROR="${SECURITY_MIRROR%/}"
log "Debian mirrors: $MIRROR, $SECURITY_MIRROR"

# ---- private apt configurations (nothing under /etc/apt changes) --------------------------------
apt_config() {  # apt_config NAME ARCH SOURCES-LINES -> path of an apt.conf for APT_CONFIG
    local d="$CACHE/apt/$1"
    mkdir -p "$d/lists/partial" "$d/cache/archives/partial" "$d/sources.list.d" "$d/preferences.d" "$d/state"
    touch "$d/status"
    printf '%s\n' "$3" >"$d/sources.list"
    cat >"$d/apt.conf" <<EOF
Dir::State "$d/state";
Dir::State::Lists "$d/lists";
Dir::State::status "$d/status";
Dir::Cache "$d/cache";
Dir::Etc::SourceList "$d/sources.list";
Dir::Etc::SourceParts "$d/sources.list.d";
Dir::Etc::Preferences "$d/preferences";
Dir::Etc::PreferencesParts "$d/preferences.d";
APT::Architecture "$2";
APT::Architectures { "$2"; };
APT::Sandbox::User "$(id -un)";
Acquire::Languages "none";
EOF
    printf '%s' "$d/apt.conf"
}
SIG="[signed-by=$KEYRING]"
deb_list() {  # deb_list DIR -> "package version" per .deb in DIR
    local deb
    for deb in "$1"/*.deb; do dpkg-deb -W --showformat='${Package} ${Version}\n' "$deb"; done
}

# ---- 1. QEMU 10 user mode ------------------------------------------------------------------------
if [[ ! -x "$CACHE/qemu/qemu-aarch64" ]]; then
    log "qemu: downloading qemu-user from bookworm-backports (amd64)"
    conf="$(apt_config amd64-backports amd64 "deb $SIG $MIRROR bookworm-backports main")"
    APT_CONFIG="$conf" apt-get -q -o Debug::NoLocking=1 update >&2
    rm -rf "$CACHE/debs/qemu" "$CACHE/qemu.tmp"
    mkdir -p "$CACHE/debs/qemu" "$CACHE/qemu.tmp/x"
    (cd "$CACHE/debs/qemu" && APT_CONFIG="$conf" apt-get -q download qemu-user/bookworm-backports >&2)
    deb="$(ls "$CACHE"/debs/qemu/qemu-user_*.deb)"
    dpkg -x "$deb" "$CACHE/qemu.tmp/x"
    cp "$CACHE/qemu.tmp/x/usr/bin/qemu-aarch64" "$CACHE/qemu.tmp/qemu-aarch64"
    rm -rf "$CACHE/qemu.tmp/x"
    deb_list "$CACHE/debs/qemu" >"$CACHE/qemu.tmp/debs.txt"
    ver="$("$CACHE/qemu.tmp/qemu-aarch64" --version | sed -n 's/^qemu-aarch64 version \([0-9][0-9.]*\).*/\1/p')"
    [[ "${ver%%.*}" -ge 10 ]] 2>/dev/null \
        || die "qemu-aarch64 from $deb reports version '$ver'; need >= 10 (QEMU 7.2 crashes the runtimes)"
    rm -rf "$CACHE/qemu"
    mv "$CACHE/qemu.tmp" "$CACHE/qemu"
    log "qemu: $ver"
else
    log "qemu: already there"
fi
QEMU="$CACHE/qemu/qemu-aarch64"
QEMU_V="$("$QEMU" --version | sed -n 's/^qemu-aarch64 version \([^ ]*\).*/\1/p')"

# ---- 2. arm64 Python sysroot -----------------------------------------------------------------------
if [[ ! -x "$CACHE/sysroot/usr/bin/python$PY_SERIES" ]]; then
    log "sysroot: resolving python$PY_SERIES for arm64 (bookworm, -updates, -security)"
    conf="$(apt_config arm64 arm64 "deb $SIG $MIRROR bookworm main
deb $SIG $MIRROR bookworm-updates main
deb $SIG $SECURITY_MIRROR bookworm-security main")"
    APT_CONFIG="$conf" apt-get -q -o Debug::NoLocking=1 update >&2
    mapfile -t pkgs < <(APT_CONFIG="$conf" apt-cache depends --recurse --no-recommends --no-suggests \
        --no-conflicts --no-breaks --no-replaces --no-enhances --no-pre-depends \
        "python$PY_SERIES" libstdc++6 libgcc-s1 | grep -v -e '^ ' -e '^<' | sort -u | grep -Ev "$SYSROOT_DROP")
    [[ ${#pkgs[@]} -gt 10 ]] || die "dependency resolution for python$PY_SERIES found only: ${pkgs[*]}"
    log "sysroot: downloading ${#pkgs[@]} arm64 packages"
    rm -rf "$CACHE/debs/sysroot" "$CACHE/sysroot.tmp"
    mkdir -p "$CACHE/debs/sysroot" "$CACHE/sysroot.tmp"
    (cd "$CACHE/debs/sysroot" && APT_CONFIG="$conf" apt-get -q download "${pkgs[@]}" >&2)
    for deb in "$CACHE"/debs/sysroot/*.deb; do
        [[ "$(dpkg-deb -f "$deb" Architecture)" =~ ^(arm64|all)$ ]] || die "$deb is not an arm64 package"
        dpkg -x "$deb" "$CACHE/sysroot.tmp"
    done
    [[ -x "$CACHE/sysroot.tmp/usr/bin/python$PY_SERIES" ]] || die "the unpacked sysroot has no usr/bin/python$PY_SERIES"
    deb_list "$CACHE/debs/sysroot" >"$CACHE/sysroot.tmp/.edgeprune-debs.txt"
    rm -rf "$CACHE/sysroot"
    mv "$CACHE/sysroot.tmp" "$CACHE/sysroot"
    log "sysroot: $(du -sh "$CACHE/sysroot" | cut -f1)"
else
    log "sysroot: already there"
fi
PYBIN="sysroot/usr/bin/python$PY_SERIES"

# ---- 3. aarch64 wheels, pinned to the host's versions ----------------------------------------------------
have_dist() { compgen -G "$CACHE/site-packages/$1-$2.dist-info" >/dev/null; }
if have_dist numpy "$NUMPY_V" && have_dist ai_edge_litert "$LITERT_V" && have_dist onnxruntime "$ORT_V"; then
    log "site-packages: already there"
else
    log "wheels: numpy==$NUMPY_V ai-edge-litert==$LITERT_V onnxruntime==$ORT_V (+ deps) for aarch64 cp${PY_SERIES/./}"
    rm -rf "$CACHE/wheels.tmp"
    mkdir -p "$CACHE/wheels.tmp"
    pip_args=(--disable-pip-version-check --only-binary=:all: --python-version "$PY_SERIES"
              --implementation cp "${PLATFORMS[@]}" -c "$CONSTRAINTS")
    want=("numpy==$NUMPY_V" "ai-edge-litert==$LITERT_V" "onnxruntime==$ORT_V")
    "$HOST_PY" -m pip download -q "${pip_args[@]}" -d "$CACHE/wheels.tmp" "${want[@]}" >&2
    log "site-packages: unpacking the wheels"
    rm -rf "$CACHE/site-packages.tmp"
    "$HOST_PY" -m pip install -q "${pip_args[@]}" --no-index --find-links "$CACHE/wheels.tmp" \
        --no-compile --target "$CACHE/site-packages.tmp" "${want[@]}" >&2
    rm -rf "$CACHE/site-packages"
    mv "$CACHE/site-packages.tmp" "$CACHE/site-packages"
    rm -rf "$CACHE/wheels.tmp"
    have_dist ai_edge_litert "$LITERT_V" || die "site-packages lacks ai_edge_litert $LITERT_V after install"
fi

# ---- 4. smoke test under emulation: import everything, check machine and versions -------------------------
log "smoke test: importing the runtimes under qemu-aarch64 -cpu $SMOKE_CPU (takes ~10 s)"
probe="$(env -i PATH=/usr/bin:/bin LANG=C.UTF-8 "$QEMU" -cpu "$SMOKE_CPU" -L "$CACHE/sysroot" \
    "$CACHE/$PYBIN" -I -S -c '
import json, platform, sys
sys.path.insert(0, sys.argv[1])
import numpy, onnxruntime
import ai_edge_litert
from ai_edge_litert.interpreter import Interpreter
from importlib.metadata import version
print(json.dumps({"machine": platform.machine(), "python": platform.python_version(),
                  "numpy": numpy.__version__, "onnxruntime": onnxruntime.__version__,
                  "ai-edge-litert": version("ai-edge-litert")}))
' "$CACHE/site-packages" | tail -n1)" || die "the aarch64 runtime failed to import numpy/onnxruntime/ai_edge_litert (see above)"
log "smoke test: $probe"

# ---- 5. manifest, last and atomically ----------------------------------------------------------------------
"$HOST_PY" - "$CACHE" "$SCHEMA" "$probe" "$QEMU_V" "$PYBIN" "$NUMPY_V" "$LITERT_V" "$ORT_V" \
    "$MIRROR" "$SECURITY_MIRROR" <<'EOF'
import datetime, glob, json, os, sys
cache, schema, probe, qemu_v, pybin, numpy_v, litert_v, ort_v, mirror, sec_mirror = sys.argv[1:]
probe = json.loads(probe)
want = {"numpy": numpy_v, "ai-edge-litert": litert_v, "onnxruntime": ort_v}
if probe["machine"] != "aarch64":
    sys.exit(f"error: the emulated python reports machine {probe['machine']!r}, not 'aarch64'")
bad = {k: (probe[k], v) for k, v in want.items() if probe[k] != v}
if bad:
    sys.exit(f"error: aarch64 versions differ from constraints.txt (got, want): {bad}")

def deb_versions(listing):
    with open(os.path.join(cache, listing)) as f:
        return dict(line.split() for line in f if line.strip())

manifest = {
    "schema": int(schema),
    "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "note": "emulated aarch64: for correctness checks only; timings mean nothing for a device",
    "qemu": {"version": qemu_v, "path": "qemu/qemu-aarch64",
             "debs": deb_versions("qemu/debs.txt")},
    "python": {"version": probe["python"], "executable": pybin, "sysroot": "sysroot"},
    "site_packages": "site-packages",
    "packages": want,
    "installed": sorted(os.path.basename(p)[:-len(".dist-info")]
                        for p in glob.glob(os.path.join(cache, "site-packages", "*.dist-info"))),
    "sysroot_debs": deb_versions("sysroot/.edgeprune-debs.txt"),
    "mirrors": [mirror, sec_mirror],
    "smoke_test": probe,
    "paths_are_relative_to": "the directory holding this manifest",
}
tmp = os.path.join(cache, "manifest.json.tmp")
with open(tmp, "w") as f:
    json.dump(manifest, f, indent=2, sort_keys=True)
    f.write("\n")
    f.flush()
    os.fsync(f.fileno())
os.replace(tmp, os.path.join(cache, "manifest.json"))
EOF
rm -rf "$CACHE/apt" "$CACHE/debs"   # downloads and apt indexes: only a rebuild needs them
log "done: $CACHE/manifest.json ($(du -sh "$CACHE" | cut -f1) in $CACHE)"
