# The compose test's Redis: Debian's redis-server, from .debs downloaded on the host
# (tests/compose/build.sh), built with no network. Stands in for the official
# redis:7 image: redis-server and redis-cli on PATH, user redis, /data.
ARG BASE_IMAGE=booklab-test/debian:bookworm
FROM ${BASE_IMAGE}
COPY debs/ /tmp/debs/
# policy-rc.d: the packages' scripts must not try to start services while installing
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d \
 && dpkg -i /tmp/debs/*.deb \
 && rm -rf /tmp/debs /usr/sbin/policy-rc.d \
 && mkdir -p /data && chown redis:redis /data \
 && redis-server --version
WORKDIR /data
EXPOSE 6379
CMD ["redis-server"]
