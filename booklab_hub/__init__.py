"""Booklab's JupyterHub side: GitLab login, pages and configuration loading."""
