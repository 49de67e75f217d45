"""What the hub asks a runner to run: the one definition of a new job's record.

The spawner fills a :class:`JobRequest` from the launch; so does the tests'
stand-in for the hub (``tests/conftest_runner.py``), so both write exactly the
fields, signature and sealed secrets that runners check (docs/protocol.md,
"Signatures").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .crypto import SecretBox, Signer
from .jobs import encode_fields


@dataclass(frozen=True)
class JobRequest:
    user: str
    server_name: str
    project: str  # path with namespace, e.g. "group/project"
    project_id: str
    ref: str
    sha: str  # the commit the ref resolved to, with the user's token
    clone_url: str  # the project's HTTPS URL (the git proxy forwards to it)
    ssh_url: str  # for a deploy-key clone
    clone_method: str  # "ssh" (deploy key) or "proxy"
    cmd: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # not secret: secrets are sealed
    deploy_key_id: str = ""
    mem_limit: str = ""
    cpu_limit: str = ""
    profile: str = ""  # the launch profile ("": the default one)
    labels: dict[str, str] = field(default_factory=dict)  # runner labels it needs
    gpus: str = ""  # GPUs to hand to the container: "", a count, or "all"

    def record(self, job_id: str, signer: Signer) -> dict[str, str]:
        """The job record as Redis stores it, signed with the runner token."""
        record = {**encode_fields(asdict(self)), "id": job_id}
        if not self.labels:
            record["labels"] = ""  # signed only when not empty (crypto.SIGNED_JOB_EXTRAS)
        record["sig"] = signer.sign_job(record)
        return record

    def sealed(self, job_id: str, runner_token: str,
               secrets: dict[str, Any]) -> tuple[dict[str, str], str]:
        """(record, blob): the signed record, and ``secrets`` (the clone credential,
        secret env) encrypted and bound to it, ready for ``JobStore.create``."""
        record = self.record(job_id, Signer(runner_token))
        return record, SecretBox(runner_token).seal(job_id, record, secrets)
