# The image the Helm chart runs (image.repository / image.tag), for users
# with a Docker engine:
#
#   docker build -t registry.example/m2m-operator:0.1.0 .
#
# It has the same layout as the image scripts/image.sh builds without Docker
# (that script is what the tests run): the release binary at
# /usr/local/bin/m2m-operator, exactly the shared libraries `ldd` names for
# it, an /etc/passwd with the non-root user 65532, no shell. The entrypoint
# is the binary; the chart passes the subcommand and runs it as UID 65532
# with a read-only root filesystem.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin m2m-operator \
 && install -D -m 0755 target/release/m2m-operator /out/usr/local/bin/m2m-operator \
 && for lib in $(ldd target/release/m2m-operator | grep -o '/[^ ]*' | sort -u); do \
      install -D -m 0755 "$(readlink -f "$lib")" "/out$lib"; \
    done \
 && mkdir -p /out/etc \
 && printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n' >/out/etc/passwd \
 && printf 'root:x:0:\nnonroot:x:65532:\n' >/out/etc/group \
 && install -d -m 1777 /out/tmp

FROM scratch
COPY --from=build /out/ /
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/m2m-operator"]
LABEL org.opencontainers.image.title=m2m-operator \
      org.opencontainers.image.version=0.1.0 \
      org.opencontainers.image.licenses=Apache-2.0
