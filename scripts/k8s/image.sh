# Sourced by scripts/k8s-testbed.sh: `image` builds the eaas image and the managed-Redis image from
# a Debian rootfs made here (Docker Hub is unreachable), with wheels downloaded on the host (pip inside a
# chroot fails TLS verification here), and imports both into the node's containerd.
# Everything is keyed by content under ~/.cache/eaas, so a rerun with unchanged inputs is a no-op.

IMAGE_CACHE="${EAAS_IMAGE_CACHE:-$CACHE_ROOT/images}"
BUILDAH_ROOT="${EAAS_BUILDAH_ROOT:-$CACHE_ROOT/containers}"
# The project's code: what the Dockerfile copies. Anything else changing does not change the image.
IMAGE_INPUTS="Dockerfile pyproject.toml README.md eaas gateway expert_service operator protos"
BASE_PACKAGES="python3,python3-pip,passwd,ca-certificates"
REDIS_PACKAGES="redis-server"
DEBIAN_SUITE=bookworm
IMAGE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

buildah_() { buildah --root "$BUILDAH_ROOT/storage" --runroot "$RUN_DIR/buildah" "$@"; }

content_key() { sha256sum | cut -c1-12; }

# Hash of files' names and contents under the given paths (relative to the repository).
tree_key() {
    (cd "$REPO" && find "$@" -type f -not -path '*/__pycache__/*' -not -name '*.pyc' -print0 \
        | sort -z | xargs -0 sha256sum) | content_key
}

# A minbase Debian rootfs tar with the given packages, cached by suite + packages + this recipe.
debian_rootfs() {
    local packages="$1" key tar
    key=$(printf '%s %s %s v2' "$DEBIAN_SUITE" "$packages" "$(dpkg-query -W -f='${Version}' mmdebstrap)" | content_key)
    tar="$IMAGE_CACHE/rootfs-$key.tar"
    if [ ! -f "$tar" ]; then
        log "mmdebstrap $DEBIAN_SUITE + $packages"
        mkdir -p "$IMAGE_CACHE"
        # No docs, man pages or locales: they are half of a minbase system and no pod reads them.
        mmdebstrap --quiet --format=tar --variant=minbase --include="$packages" \
            --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
            --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
            --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
            "$DEBIAN_SUITE" "$tar.tmp" >&2
        mv "$tar.tmp" "$tar"
    fi
    echo "$tar"
}

# Makes image NAME from a rootfs tar unless buildah already has it. Extra args: buildah config flags.
image_from_rootfs() {
    local name="$1" tar="$2" ctr
    shift 2
    if ! buildah_ inspect --type image "$name" >/dev/null 2>&1; then
        log "buildah: $name from $(basename "$tar")"
        ctr=$(buildah_ from scratch)
        buildah_ add "$ctr" "$tar" / >/dev/null
        buildah_ config "$@" "$ctr"
        buildah_ commit --quiet --rm "$ctr" "$name" >/dev/null
    fi
}

# The project's dependencies as wheels for cp311 (Debian's python3.11): torch from the local CPU wheel
# that pip's configuration finds, everything else from PyPI. async-timeout: redis needs it below 3.11.3.
download_wheels() {
    local deps key dir
    deps=$(cd "$REPO" && python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml","rb"))["project"]["dependencies"]))')
    deps="$deps
torch==2.13.0
async-timeout
setuptools>=69
wheel"
    key=$(printf '%s v1' "$deps" | content_key)
    dir="$IMAGE_CACHE/wheels-$key"
    if [ ! -d "$dir" ]; then
        log "pip download (wheels for the image)"
        rm -rf "$dir.tmp"
        mkdir -p "$dir.tmp"
        printf '%s\n' "$deps" > "$dir.tmp/requirements.txt"
        python3 -m pip download --quiet --only-binary=:all: --python-version 3.11 \
            --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any \
            -d "$dir.tmp" -r "$dir.tmp/requirements.txt" >&2
        mv "$dir.tmp" "$dir"
    fi
    echo "$dir"
}

# Imports an image from buildah's storage into the node's containerd (namespace k8s.io).
import_image() {
    local name="$1" archive="$RUN_DIR/image-import.tar"
    if ctr_ images ls -q | grep -qx "$name"; then return 0; fi
    log "import $name into containerd"
    rm -f "$archive"
    buildah_ push --quiet "$name" "docker-archive:$archive:$name" >/dev/null
    ctr_ images import --no-unpack=false "$archive" >/dev/null
    rm -f "$archive"
}

# Older builds of the eaas image (1.4 GB each) would pile up in both stores: keep the current one.
prune_images() {
    local keep="$1" old
    for old in $(buildah_ images --format '{{.Name}}:{{.Tag}}' | grep '^localhost/eaas:' | grep -vx "$keep"); do
        buildah_ rmi "$old" >/dev/null 2>&1 || true
    done
    # Never an image a container still uses: a running pod's replacement would find no image to start.
    local in_use
    in_use=$(ctr_ containers ls 2>/dev/null | awk 'NR > 1 {print $2}' | sort -u)
    for old in $(ctr_ images ls -q | grep '^localhost/eaas:' | grep -v "^$keep"); do
        echo "$in_use" | grep -qx "$old" || ctr_ images rm "$old" >/dev/null 2>&1 || true
    done
}

build_images() {
    require_running
    local base_tar redis_tar wheels base_name redis_name key name
    base_tar=$(debian_rootfs "$BASE_PACKAGES")
    redis_tar=$(debian_rootfs "$REDIS_PACKAGES")
    base_name="localhost/eaas-base:$(echo "$base_tar $IMAGE_PATH" | content_key)"
    redis_name="localhost/eaas-redis:$(echo "$redis_tar $IMAGE_PATH" | content_key)"
    image_from_rootfs "$base_name" "$base_tar" --env PATH="$IMAGE_PATH" --cmd python3
    image_from_rootfs "$redis_name" "$redis_tar" --env PATH="$IMAGE_PATH" --cmd redis-server
    wheels=$(download_wheels)
    key=$( (echo "$base_name $wheels"; tree_key $IMAGE_INPUTS) | content_key)
    name="localhost/eaas:$key"
    if ! buildah_ inspect --type image "$name" >/dev/null 2>&1; then
        log "buildah bud $name"
        (cd "$REPO" && buildah_ bud --quiet --isolation chroot --layers \
            --build-arg BASE_IMAGE="$base_name" --build-arg WHEELS=/wheels \
            --volume "$wheels:/wheels:ro" -t "$name" -f Dockerfile . >&2)
    fi
    import_image "$name"
    import_image "$redis_name"
    prune_images "$name"
    echo "export EAAS_IMAGE=$name"
    echo "export EAAS_REDIS_IMAGE=$redis_name"
}
