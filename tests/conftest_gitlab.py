"""placeholder until the GitLab double lands"""
