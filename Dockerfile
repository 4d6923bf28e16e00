# lsfn's images. One Dockerfile for every function, two targets per function:
#
#   function     the function with its model: torch, the function's libraries, weights baked in
#   front-door   the same routes without the model (README "Scale to zero"): no torch, the
#                weights' manifest instead of the files, so it answers the same model versions
#
#   docker build --target function   --build-arg FUNCTION=sam2 -t lsfn-sam2 .
#   docker build --target front-door --build-arg FUNCTION=sam2 -t lsfn-sam2-front-door .
#   (buildah bud takes the same arguments; scripts/build-images builds them all)
#
# One file rather than one per function: the functions' images differ only in an extra and a
# weights list, and they share the torch layer, which is the slow one (GBs).
#
# Build arguments (README "Images"):
#   FUNCTION             yolo, sam2, grounding_dino, grounding_sam or sam3
#   TORCH                cu126 (default: runs on Cloud Run's L4, driver 535), cu130, cpu, or pypi
#                        (PyPI's own build, CUDA 13: drivers >= 580, Cloud Run's RTX PRO 6000, Modal)
#   TORCH_VERSION, TORCHVISION_VERSION   the releases the tests pin; an empty TORCHVISION_VERSION
#                        installs none (Grounding DINO then uses transformers' PIL image processor)
#   TORCH_INDEX_URL      replaces the index TORCH implies; "none" uses pip's configuration
#   MODEL_SIZE           SAM 2's size for sam2 and grounding_sam (tiny, small, base_plus, large):
#                        the checkpoint baked and the MODEL_SIZE the image runs (default large)
#   WEIGHTS              the names to bake from the function's weights.json (default: its defaults)
#   WEIGHTS_LIST         another weights.json in the build context
#   WEIGHTS_FROM         a folder of the build context looked in before downloading (default:
#                        deploy/image/weights)
#
# pip reaches its index with the builder's own network and certificates. Where it needs a
# configuration of the builder's (a proxy's CA, a mirror), pass it as build secrets, which
# leave nothing in the image: --secret id=pipconf,src=/etc/pip.conf --secret id=cacert,src=<CA file>

# Every stage that reads one of these declares it again (bare): a stage sees only its own ARGs.
ARG FUNCTION=yolo
# SAM 2's size (SAM 2, Grounding SAM): the checkpoint baked and the MODEL_SIZE the image runs.
ARG MODEL_SIZE=large
ARG TORCH=cu126
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1

# -- Python 3.11 (Debian bookworm's), a virtual environment and the user the server runs as --
FROM debian:bookworm-slim AS python
# Debian's bookworm packages are not pinned: its point releases carry the security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/lsfn \
    && groupadd --system --gid 10001 lsfn \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --create-home --shell /usr/sbin/nologin lsfn
ENV PATH=/opt/lsfn/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    YOLO_OFFLINE=1 \
    YOLO_CONFIG_DIR=/tmp/ultralytics \
    MPLCONFIGDIR=/tmp/matplotlib \
    MODEL_ROOT=/app/models \
    IMAGE_INFO=/app/image.json \
    LSFN_HOST=0.0.0.0 \
    PORT=8080
# A pip that reads extras in their normalised spelling (bookworm's 23.0 ignores grounding_dino).
RUN --mount=type=secret,id=pipconf,target=/etc/pip.conf \
    --mount=type=secret,id=cacert,target=/etc/ssl/certs/ca-certificates.crt \
    pip install --no-cache-dir --upgrade "pip>=24"

# -- lsfn as a wheel, built once for every target -------------------------------------------
FROM python AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY lsfn/ lsfn/
COPY shared/ shared/
COPY functions/ functions/
# The package's modules and install step, not the local weights folder beside them.
COPY deploy/*.py deploy/
COPY deploy/image/install-function deploy/image/
RUN --mount=type=secret,id=pipconf,target=/etc/pip.conf \
    --mount=type=secret,id=cacert,target=/etc/ssl/certs/ca-certificates.crt \
    pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# -- lsfn without a model library: the front door's runtime and the weights tool ------------
FROM python AS core
COPY --from=wheel /wheels /wheels
# google-auth: a front door on Cloud Run mints ID tokens for its private GPU service (and
# access tokens to run the training job); the gcs extra: it reads a bucket's trained versions.
# (The wheel is the one built above; its extras' versions are bounded in pyproject.toml.)
# hadolint ignore=DL3013
RUN --mount=type=secret,id=pipconf,target=/etc/pip.conf \
    --mount=type=secret,id=cacert,target=/etc/ssl/certs/ca-certificates.crt \
    wheel="$(ls /wheels/lsfn-*.whl)" && pip install --no-cache-dir "${wheel}[gcs]" "google-auth>=2.30,<3"

# -- the function's weights: from WEIGHTS_FROM, else downloaded; checked; a manifest written --
FROM core AS weights
ARG FUNCTION
ARG MODEL_SIZE
ARG WEIGHTS=""
ARG WEIGHTS_LIST=""
ARG WEIGHTS_FROM=deploy/image/weights
# Under its own path in the build context, so that a message naming it names the context's folder.
COPY ${WEIGHTS_FROM}/ /build-context/${WEIGHTS_FROM}/
# (COPY needs a source: without WEIGHTS_LIST a file that is then not read.)
COPY ${WEIGHTS_LIST:-pyproject.toml} /tmp/weights-list.json
# A build without access to a file's URL stops here with one sentence naming it and where a
# local copy would be taken from (WEIGHTS_FROM). A gated repository's files (SAM 3) take a
# Hugging Face token as a build secret, which leaves nothing in the image:
#   --secret id=hf_token,src=<file holding the token>
RUN --mount=type=secret,id=hf_token,target=/run/secrets/hf_token \
    set -- ; for name in $WEIGHTS; do set -- "$@" --only "$name"; done; \
    case "$FUNCTION" in sam2 | grounding_sam) set -- "$@" --size "$MODEL_SIZE" ;; esac; \
    HF_TOKEN="$(cat /run/secrets/hf_token 2>/dev/null || true)" lsfn weights "$(if [ -n "$WEIGHTS_LIST" ]; then echo /tmp/weights-list.json; else echo "$FUNCTION"; fi)" \
        --dest /app/models --from "/build-context/$WEIGHTS_FROM" --manifest /app/models/weights-manifest.json "$@"

# -- the front door: no model, the weights' manifest for the versions it answers -----------
FROM core AS front-door
ARG FUNCTION
ARG MODEL_SIZE
COPY --from=weights /app/models/weights-manifest.json /app/models/weights-manifest.json
RUN python -m lsfn.deploy.image_info "$FUNCTION" --role front-door \
        --manifest /app/models/weights-manifest.json > /app/image.json
LABEL org.opencontainers.image.title="lsfn-${FUNCTION}-front-door" \
      org.opencontainers.image.description="lsfn front door for ${FUNCTION}: no model, forwards to UPSTREAM_URL" \
      io.lsfn.function="${FUNCTION}" \
      io.lsfn.role="front-door"
ENV LSFN_FUNCTION=${FUNCTION} \
    MODEL_SIZE=${MODEL_SIZE}
USER 10001:10001
WORKDIR /app
EXPOSE 8080
# Serves the front door of LSFN_FUNCTION, forwarding to UPSTREAM_URL (required).
CMD ["lsfn", "serve", "--front-door"]

# -- torch: the slow layer, shared by every function built with the same arguments ---------
FROM python AS torch
ARG TORCH
ARG TORCH_VERSION
ARG TORCHVISION_VERSION
ARG TORCH_INDEX_URL=""
# The releases are pinned, by build arguments hadolint cannot see through. A cu*/cpu build is
# pinned with its local version (2.14.1+cu126), so PyPI's CUDA 13 build can never stand in for
# it; then the CUDA torch reports is checked against TORCH.
# hadolint ignore=DL3013
RUN --mount=type=secret,id=pipconf,target=/etc/pip.conf \
    --mount=type=secret,id=cacert,target=/etc/ssl/certs/ca-certificates.crt \
    case "$TORCH" in pypi) local="" ;; *) local="+$TORCH" ;; esac; \
    index="${TORCH_INDEX_URL:-$(if [ -z "$local" ]; then echo none; else echo "https://download.pytorch.org/whl/$TORCH"; fi)}"; \
    set -- "torch==${TORCH_VERSION}${local}"; \
    if [ -n "$TORCHVISION_VERSION" ]; then set -- "$@" "torchvision==${TORCHVISION_VERSION}${local}"; fi; \
    if [ "$index" != none ]; then set -- "$@" --index-url "$index" --extra-index-url https://pypi.org/simple; fi; \
    pip install --no-cache-dir "$@"
COPY deploy/image/check-torch /usr/local/bin/
RUN check-torch "$TORCH"

# -- the function: its libraries, its weights, a warm-up before /health says UP -------------
FROM torch AS function
ARG FUNCTION
ARG MODEL_SIZE
ARG TORCH
ARG TORCH_VERSION
COPY --from=wheel /wheels /wheels
COPY deploy/image/install-function /usr/local/bin/
RUN --mount=type=secret,id=pipconf,target=/etc/pip.conf \
    --mount=type=secret,id=cacert,target=/etc/ssl/certs/ca-certificates.crt \
    install-function "$FUNCTION" "$(ls /wheels/lsfn-*.whl)"
COPY --from=weights /app/models /app/models
RUN python -m lsfn.deploy.image_info "$FUNCTION" --torch-build "$TORCH" \
        --manifest /app/models/weights-manifest.json > /app/image.json
LABEL org.opencontainers.image.title="lsfn-${FUNCTION}" \
      org.opencontainers.image.description="lsfn ${FUNCTION}: Label Studio ML backend as a serverless GPU function" \
      io.lsfn.function="${FUNCTION}" \
      io.lsfn.role="function" \
      io.lsfn.torch="${TORCH}" \
      io.lsfn.torch-version="${TORCH_VERSION}"
ENV LSFN_FUNCTION=${FUNCTION} \
    MODEL_SIZE=${MODEL_SIZE}
USER 10001:10001
WORKDIR /app
EXPOSE 8080
CMD ["lsfn", "serve"]
