"""The double's gitlab-shell: run by sshd, as the `git` user, with only the stdlib.

This file is copied next to the double's sshd configuration and run with the
system's python3, in two roles (as GitLab's own shell has two binaries):

``git_shell.py authorized-keys API SECRET_FILE USER KEY``
    sshd's ``AuthorizedKeysCommand``: asks the double which deploy key the
    offered public key is (``GET /api/v4/internal/authorized_keys?key=``) and
    prints one ``authorized_keys`` line whose forced command is
    ``git_shell.py shell API SECRET_FILE key-<id>``. Prints nothing for an
    unknown key or a user other than ``git``.

``git_shell.py shell API SECRET_FILE key-<id>``
    the forced command: reads ``SSH_ORIGINAL_COMMAND`` (``git-upload-pack
    '/demo/hello.git'``), asks the double whether that key may do that
    (``POST /api/v4/internal/allowed``) and then runs ``git upload-pack`` on the
    bare repository. Anything else (a push, a shell) is refused with GitLab's
    message on stderr.
"""

import json
import os
import re
import shlex
import sys
import urllib.error
import urllib.parse
import urllib.request

_COMMANDS = {"git-upload-pack": "upload-pack", "git-receive-pack": "receive-pack",
             "git-upload-archive": "upload-archive"}
_OPTIONS = "no-port-forwarding,no-X11-forwarding,no-agent-forwarding,no-pty"


def _request(api, secret_file, path, body=None):
    with open(secret_file) as f:
        secret = f.read().strip()
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(api + path, data=data, headers={
        "Gitlab-Shared-Secret": secret, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def authorized_keys(api, secret_file, user, key):
    if user != "git":
        return 0
    query = urllib.parse.urlencode({"key": key})
    status, data = _request(api, secret_file, f"/api/v4/internal/authorized_keys?{query}")
    if status != 200:
        return 0
    script = os.path.abspath(__file__)
    command = f"{sys.executable} {script} shell {api} {secret_file} key-{data['id']}"
    print(f'command="{command}",{_OPTIONS} {data["key"]}')
    return 0


def _refuse(message):
    sys.stderr.write(f"remote: \nremote: ========================================\n"
                     f"remote: \nremote: {message}\nremote: \n"
                     f"remote: ========================================\nremote: \n")
    return 1


def shell(api, secret_file, key):
    original = os.environ.get("SSH_ORIGINAL_COMMAND", "")
    try:
        words = shlex.split(original)
    except ValueError:
        words = []
    if len(words) == 3 and words[0] == "git" and f"git-{words[1]}" in _COMMANDS:
        words = [f"git-{words[1]}", words[2]]
    if len(words) != 2 or words[0] not in _COMMANDS:
        return _refuse("Welcome to the GitLab double! This key is for git only.")
    match = re.fullmatch(r"key-(\d+)", key)
    if not match:
        return _refuse("Invalid key id")
    status, data = _request(api, secret_file, "/api/v4/internal/allowed", {
        "action": words[0], "key_id": int(match.group(1)), "project": words[1],
        "protocol": "ssh"})
    if status != 200 or not data.get("status"):
        return _refuse(data.get("message") or "Access denied")
    path = data["repository_path"]
    os.execvp("git", ["git", "-c", "safe.directory=*", _COMMANDS[words[0]], path])
    return 1  # not reached


def main(argv):
    if len(argv) == 6 and argv[1] == "authorized-keys":
        return authorized_keys(*argv[2:])
    if len(argv) == 5 and argv[1] == "shell":
        return shell(*argv[2:])
    sys.stderr.write("usage: git_shell.py authorized-keys|shell ...\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
