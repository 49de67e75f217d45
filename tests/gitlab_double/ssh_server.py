"""A real OpenSSH server for the double: git over SSH with deploy keys.

``/usr/sbin/sshd -D -e`` listens on a free 127.0.0.1 port with its own
configuration and host key in a private directory. Logins are for the system
user ``git`` only (created by ``scripts/setup-system.sh``), with public keys
only; there is no ``authorized_keys`` file: sshd's ``AuthorizedKeysCommand``
(``git_shell.py authorized-keys``, run as ``git``) asks the double for the
deploy key over HTTP, as GitLab's own shell does, and answers with a forced
command that lets that key fetch only the projects it is a deploy key of.

Why a real user: sshd only logs in accounts from the system's password
database, and it runs the forced command with that user's shell. ``git`` is
what GitLab uses (``git@gitlab.example.org``). It must be able to read the
double's repositories, so the double's data directory must be traversable by
others (``gitlab_ssh`` creates one outside pytest's 0700 tmp tree).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from .store import Store

SSHD = "/usr/sbin/sshd"
PYTHON = "/usr/bin/python3"  # the system's: sshd runs the shell as `git`, outside any venv
GIT_USER = "git"


class SshServerError(RuntimeError):
    pass


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _git_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(GIT_USER)
    except KeyError:
        raise SshServerError("the system user 'git' is missing: run scripts/setup-system.sh "
                             "(it creates it)") from None


def _check_readable_by_others(path: Path) -> None:
    for parent in [path, *path.parents]:
        if parent.exists() and not os.stat(parent).st_mode & 0o001:
            raise SshServerError(f"{parent} is not traversable by the 'git' user; put the "
                                 "double's data directory elsewhere (see gitlab_ssh)")


class SshServer:
    def __init__(self, store: Store, api_url: str, host: str = "127.0.0.1"):
        self.store = store
        self.api_url = api_url
        self.host = host  # where sshd listens: the double's own address
        self.port = _free_port(host)
        self.dir = Path(tempfile.mkdtemp(prefix="booklab-gitlab-sshd-"))
        self.proc: subprocess.Popen | None = None
        self.known_hosts_line = ""

    def start(self) -> None:
        git = _git_user()
        _check_readable_by_others(self.store.data_dir)
        if not os.path.exists(SSHD):
            raise SshServerError(f"{SSHD} is missing: apt-get install openssh-server")
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation
        os.chmod(self.dir, 0o755)
        from tests.services import ATTEMPTS, PortTaken

        # sshd binds its port itself: when another process took it first, start again
        # on a fresh port (the host key and known_hosts line are made anew with it)
        for attempt in range(ATTEMPTS):
            self._write_files(git)
            with open(self.dir / "sshd.log", "wb") as log:
                self.proc = subprocess.Popen(
                    [SSHD, "-D", "-e", "-f", str(self.dir / "sshd_config")],
                    stdout=log, stderr=subprocess.STDOUT)
            try:
                self._wait_listening()
                break
            except PortTaken:
                self._stop_sshd()
                if attempt == ATTEMPTS - 1:
                    raise
                self.port = _free_port(self.host)
        self.store.ssh_host, self.store.ssh_port = self.host, self.port  # ssh_url_to_repo

    def _write_files(self, git: pwd.struct_passwd) -> None:
        key = self.dir / "ssh_host_ed25519_key"
        for path in (key, key.with_suffix(".pub")):  # a start again on a fresh port
            path.unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gitlab-double",
                        "-f", str(key)], check=True, capture_output=True)
        self.known_hosts_line = (f"[{self.host}]:{self.port} "
                                 + " ".join(key.with_suffix(".pub").read_text().split()[:2]))
        self.store.internal_secret = secrets.token_hex(32)
        secret_file = self.dir / "shared_secret"
        secret_file.write_text(self.store.internal_secret)
        os.chown(secret_file, 0, git.pw_gid)
        os.chmod(secret_file, 0o640)
        shell = self.dir / "git_shell.py"
        shutil.copyfile(Path(__file__).with_name("git_shell.py"), shell)
        os.chmod(shell, 0o755)
        (self.dir / "sshd_config").write_text(self._config(shell, secret_file))

    def _config(self, shell: Path, secret_file: Path) -> str:
        return f"""\
Port {self.port}
ListenAddress {self.host}
HostKey {self.dir}/ssh_host_ed25519_key
PidFile none
UsePAM no
StrictModes yes
AllowUsers {GIT_USER}
PermitRootLogin no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile none
AuthorizedKeysCommand {PYTHON} {shell} authorized-keys {self.api_url} {secret_file} %u %k
AuthorizedKeysCommandUser {GIT_USER}
PermitUserEnvironment no
AllowTcpForwarding no
AllowAgentForwarding no
X11Forwarding no
PermitTTY no
PrintMotd no
LogLevel VERBOSE
"""

    def _wait_listening(self, timeout: float = 20) -> None:
        """Until this sshd (not another process on the port) listens."""
        from tests.services import PortTaken, wait_listening

        try:
            wait_listening(self.proc, [self.port], self.log, timeout)
        except PortTaken:
            raise
        except (RuntimeError, TimeoutError) as e:
            raise SshServerError(f"sshd did not listen: {e}") from None

    def log(self) -> str:
        path = self.dir / "sshd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _stop_sshd(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self) -> None:
        self._stop_sshd()
        self.store.ssh_port = None
        if os.environ.get("BOOKLAB_KEEP_SSHD_DIR"):
            print(f"sshd directory kept: {self.dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
