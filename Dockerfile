# CPU image of the lesion binaries (lesion-prep, lesion-train, lesion-eval, lesion-predict,
# lesion-serve) and scripts/cv.sh (on PATH as cv.sh), for running cross-validation folds and
# the rest of the pipeline under a scheduler (see deploy/README.md). The CUDA variant is
# Dockerfile.cuda.
#
#   docker build -t lesion:cpu .
#   docker run --rm -v "$PWD/data:/data" lesion:cpu cv.sh fold 0 /data/prepared-cv /data/cv --epochs 3
#
# The binaries need nothing beyond glibc, so the runtime stage is plain Debian slim; the build
# stage's Debian release must be the same one (glibc version).
ARG RUST_VERSION=1.95.0
ARG DEBIAN=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --workspace --locked \
    && mkdir /out \
    && for b in prep train eval predict serve; do cp "target/release/lesion-$b" /out/; done

FROM debian:${DEBIAN}-slim
COPY --from=build /out/ /usr/local/bin/
COPY scripts/cv.sh /usr/local/bin/cv.sh
# cv.sh's own default (<repo>/target/release) does not exist in the image.
ENV LESION_BIN=/usr/local/bin
# Pretrained weights are fetched from the Hugging Face Hub into $HF_HOME/hub: mount a volume
# there (or pass --weights none / a local file) where the containers have no network.
ENV HF_HOME=/cache/huggingface
WORKDIR /work
CMD ["cv.sh", "--help"]
