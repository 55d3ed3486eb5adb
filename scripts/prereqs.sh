# Sourced by scripts/demo and scripts/test: makes sure a fresh Debian machine that
# has only the Rust toolchain, Python 3 and apt can build and test dimple.
# Installs (with apt, as root or through sudo) only what is missing:
# - a C compiler and linker (build-essential): the bundled SQLite and the TLS stack
#   of aws-sdk-s3 are built from C sources;
# - python3-venv: the S3 test server (SeaweedFS from PyPI) lives in a venv.

dimple_prereqs() {
    local missing=()
    command -v cc >/dev/null 2>&1 || missing+=(build-essential)
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
    if ((${#missing[@]} == 0)); then
        return 0
    fi
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            echo "dimple: missing ${missing[*]}; install them with apt as root" >&2
            return 1
        fi
    fi
    echo "dimple: installing ${missing[*]} with apt" >&2
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}"
}
