# syntax=docker/dockerfile:1.7
# One image, three binaries:
#   /usr/local/bin/stead-webhook     (manifests/webhook)
#   /usr/local/bin/stead-controller  (manifests/controller)
#   /usr/local/bin/stead-instance    (copied into every database pod by its init
#                                     container, and run from the user's PostgreSQL
#                                     image; built against Debian bookworm's glibc,
#                                     so that image must be glibc 2.36 or newer)
# Build: make image   (docker build -t ghcr.io/stead-dev/stead:0.1.0 .)
# The manifests name the binary in `command:`; the image sets no entrypoint.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM docker.io/library/rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src
# Every workspace member's manifest must be present for cargo to resolve the
# workspace, so the whole (filtered by .dockerignore) tree is copied.
COPY . .
# Cache mounts keep the registry and target/ between builds; the binaries are
# copied out of the cached target/ because it is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked \
        --package stead-webhook --bin stead-webhook \
        --package stead-controller --bin stead-controller \
        --package stead-instance --bin stead-instance \
 && mkdir -p /out \
 && install -m 0755 target/release/stead-webhook target/release/stead-controller target/release/stead-instance /out/

# distroless/cc: glibc and libgcc for the Rust binaries, CA certificates,
# no shell and no package manager; the :nonroot tag runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="stead" \
      org.opencontainers.image.description="stead admission webhook and controller for stead.dev DatabaseClusters" \
      org.opencontainers.image.source="https://github.com/stead-dev/stead" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/stead-webhook /out/stead-controller /out/stead-instance /usr/local/bin/
# Numeric, so the kubelet can verify runAsNonRoot without a passwd lookup.
USER 65532:65532
