# The image the Helm chart runs (image.repository / image.tag). Its
# entrypoint is the m2m-operator binary; the chart passes the subcommand
# and runs it as UID 65532 with a read-only root filesystem.
#
#   docker build -t m2m-operator:0.1.0 .
#
# No Docker engine runs where this repository is tested, so CI builds the
# same binary with cargo but never this image.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin m2m-operator

FROM debian:bookworm-slim
COPY --from=build /src/target/release/m2m-operator /usr/local/bin/m2m-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/m2m-operator"]
