# The compose test's hub and runner image: what docker/Dockerfile's `hub` and `runner`
# targets install, from files fetched on the host by tests/compose/build.sh (wheels for
# Python 3.11.2, iptables/openssh-client .debs, the host's docker CLI and buildx
# plugin), built with no network. Same paths as docker/Dockerfile: the venv
# /opt/booklab, the hub's config /usr/local/etc/booklab/jupyterhub_config.py, the
# user booklab (uid 1000) with /srv/booklab.
ARG BASE_IMAGE=booklab-test/debian:bookworm
FROM ${BASE_IMAGE} AS booklab
COPY debs/ /tmp/debs/
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d \
 && dpkg -i /tmp/debs/*.deb \
 && rm -rf /tmp/debs /usr/sbin/policy-rc.d
COPY docker/docker /usr/local/bin/docker
COPY docker/docker-buildx /usr/local/libexec/docker/cli-plugins/docker-buildx
# the dependencies first: their layer is reused while only Booklab's code changes
COPY wheels/ /tmp/wheels/
RUN python3 -m venv /opt/booklab \
 && PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    /opt/booklab/bin/pip install --no-index --find-links /tmp/wheels /tmp/wheels/*.whl \
 && rm -rf /tmp/wheels
COPY booklab/ /tmp/booklab/
COPY jupyterhub_config.py /usr/local/etc/booklab/jupyterhub_config.py
RUN PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    /opt/booklab/bin/pip install --no-index --no-deps /tmp/booklab/*.whl \
 && rm -rf /tmp/booklab \
 && useradd --uid 1000 --home-dir /srv/booklab --create-home --shell /usr/sbin/nologin booklab \
 && /opt/booklab/bin/python -c 'import booklab_hub, booklab_spawner, jupyterhub_traefik_proxy' \
 && docker buildx version && iptables --version
ENV PATH=/opt/booklab/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    BOOKLAB_CONFIG=/etc/booklab/config.yml
WORKDIR /srv/booklab
CMD ["jupyterhub", "-f", "/usr/local/etc/booklab/jupyterhub_config.py"]
# docker-compose.yml builds the hub with `target: hub` (docker/Dockerfile's stage)
FROM booklab AS hub
