"""Booklab's JupyterHub side: GitLab login, pages and configuration loading."""

import os

# Booklab's templates, for c.JupyterHub.template_paths: page.html (the hub's own plus
# Booklab's navigation links) and booklab/<page>.html
TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
