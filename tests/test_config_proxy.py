"""The `proxy:` section: what each choice makes of JupyterHub's and Traefik's config,
and the combinations that are refused at start with a message naming the keys."""

from __future__ import annotations

import pytest
import yaml
from traitlets.config import Config

from booklab_hub.config import ConfigError, apply, load

GOOD = {
    "hub": {"data_dir": "/srv/booklab", "ip": "0.0.0.0", "port": 443},
    "gitlab": {"url": "https://gitlab.example.org", "client_id": "id", "client_secret": "s"},
    "runners": {"token": "x" * 40},
    "redis": {"url": "redis://:pa%3Ass@redis.internal:6380/2", "key_prefix": "lab:"},
}


def configured(tmp_path, proxy: dict, hub: dict | None = None, environ=None) -> Config:
    data = {k: dict(v) for k, v in GOOD.items()}
    data["proxy"] = proxy
    data["hub"].update(hub or {})
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(data))
    c = Config()
    apply(c, load(str(path), environ=environ or {}))
    return c


def test_traefik_is_the_default_and_reads_booklabs_redis(tmp_path):
    c = configured(tmp_path, {})
    t = c.BooklabTraefikProxy
    assert c.JupyterHub.proxy_class == "booklab-traefik"
    assert t.should_start is True
    # host and port in the URL, the password (percent-decoded) and db apart
    assert t.redis_url == "redis://redis.internal:6380"
    assert t.redis_password == "pa:ss"
    assert t.redis_client_kwargs == {"db": 2}
    assert t.extra_static_config == {"providers": {"redis": {"db": 2}}}
    # one hub's routes behind its own prefix
    assert t.kv_traefik_prefix == "lab:traefik"
    assert t.kv_jupyterhub_prefix == "lab:jupyterhub"
    assert t.static_config_file == "/srv/booklab/traefik.toml"
    assert t.traefik_api_url == "http://127.0.0.1:8099"
    assert "traefik_api_password" not in t  # generated per start when the hub starts it


def test_chp_leaves_jupyterhubs_default_proxy(tmp_path):
    c = configured(tmp_path, {"kind": "chp"})
    assert "proxy_class" not in c.JupyterHub
    assert "BooklabTraefikProxy" not in c


def test_external_traefik_gets_only_the_routes(tmp_path):
    c = configured(tmp_path, {"start": False, "api_url": "http://traefik:8099"},
                   environ={"BOOKLAB_TRAEFIK_API_PASSWORD": "from-env-password-of-32-characters"})
    t = c.BooklabTraefikProxy
    assert t.should_start is False
    assert t.traefik_api_url == "http://traefik:8099"
    assert t.traefik_api_password == "from-env-password-of-32-characters"
    assert t.traefik_api_username == "booklab"
    # its static config is the operator's: Booklab writes none
    assert "static_config_file" not in t and "extra_static_config" not in t


def test_a_given_certificate_makes_the_hub_https(tmp_path):
    c = configured(tmp_path, {"tls_cert": "/certs/hub.pem", "tls_key": "/certs/hub.key",
                              "http_redirect_port": 80})
    assert c.JupyterHub.ssl_cert == "/certs/hub.pem"
    assert c.JupyterHub.ssl_key == "/certs/hub.key"
    redirect = c.BooklabTraefikProxy.extra_static_config["entryPoints"]["booklab-redirect"]
    assert redirect == {"address": "0.0.0.0:80", "http": {"redirections": {"entryPoint": {
        "to": "https", "scheme": "https", "permanent": True}}}}


def test_lets_encrypt_resolver_for_the_hubs_host(tmp_path):
    c = configured(tmp_path, {"acme_email": "ops@example.org",
                              "acme_ca_server": "https://acme-staging.example.org/dir"},
                   hub={"subdomain_host": "https://hub.example.org"})
    t = c.BooklabTraefikProxy
    static = t.extra_static_config
    assert t.traefik_entrypoint == "https"
    assert static["certificatesResolvers"] == {"booklab": {"acme": {
        "email": "ops@example.org", "storage": "/srv/booklab/acme.json",
        "tlsChallenge": {}, "caServer": "https://acme-staging.example.org/dir"}}}
    assert static["entryPoints"]["https"]["http"]["tls"] == {
        "certResolver": "booklab", "domains": [{"main": "hub.example.org"}]}
    assert "ssl_cert" not in c.JupyterHub


@pytest.mark.parametrize("proxy,hub,says", [
    ({"kind": "nginx"}, {}, "proxy.kind"),
    ({"tls_cert": "/c.pem"}, {}, "proxy.tls_cert and proxy.tls_key go together"),
    ({"http_redirect_port": 80}, {}, "proxy.http_redirect_port needs HTTPS"),
    ({"acme_email": "a@b.org", "tls_cert": "/c", "tls_key": "/k",
      "acme_domain": "h.org"}, {}, "exclude each other"),
    ({"acme_email": "a@b.org"}, {}, "proxy.acme_domain"),
    ({"acme_email": "a@b.org", "acme_domain": "h.org", "start": False,
      "api_password": "p" * 32}, {}, "proxy.acme_email needs proxy.start true"),
    ({"kind": "chp", "acme_email": "a@b.org"}, {}, "needs proxy.kind traefik"),
    ({"start": False}, {}, "proxy.api_password"),
    ({"start": False, "api_password": "short"}, {}, "proxy.api_password"),
    ({"api_url": "traefik:8099"}, {}, "proxy.api_url"),
])
def test_refused_combinations_name_their_keys(tmp_path, proxy, hub, says):
    with pytest.raises(ConfigError) as exc:
        configured(tmp_path, proxy, hub)
    assert says in str(exc.value)


@pytest.mark.parametrize("url", ["unix:///run/redis.sock", "rediss://redis:6380/0"])
def test_traefik_needs_redis_over_plain_tcp(tmp_path, url):
    data = {k: dict(v) for k, v in GOOD.items()}
    data["redis"]["url"] = url
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="redis://"):
        load(str(path), environ={})
    data["proxy"] = {"kind": "chp"}  # configurable-http-proxy does not care
    path.write_text(yaml.safe_dump(data))
    assert load(str(path), environ={})["redis.url"] == url
