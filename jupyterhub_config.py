# JupyterHub configuration for Booklab: reads config.yml and wires the plugins in.
#
# The operator edits config.yml (or the file named by $BOOKLAB_CONFIG), not
# this file. Secrets may come from the environment instead of the file:
# GITLAB_CLIENT_ID, GITLAB_CLIENT_SECRET, BOOKLAB_REDIS_URL, BOOKLAB_RUNNER_TOKEN,
# and JUPYTERHUB_CRYPT_KEY (required). See docs/configuration.md.
import os
import sys

from booklab_hub.config import ConfigError, apply, check_crypt_key, load

c = get_config()  # noqa: F821 (provided by JupyterHub when it loads this file)

_path = os.environ.get(
    "BOOKLAB_CONFIG", os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.yml")
)
try:
    check_crypt_key()
    apply(c, load(_path))
except ConfigError as e:
    sys.exit(f"booklab: {e}")
