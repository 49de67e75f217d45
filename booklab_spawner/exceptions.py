"""Named exceptions shared by the hub side and the runner."""


class BooklabError(Exception):
    """Base class; ``str(exc)`` is safe to show to a user (no secrets)."""


class JobNotFound(BooklabError):
    """No job record under that id (expired, or never existed)."""


class InvalidTransition(BooklabError):
    """A job state change that the state machine does not allow."""

    def __init__(self, job_id: str, current: str | None, wanted: str):
        self.job_id, self.current, self.wanted = job_id, current, wanted
        super().__init__(f"job {job_id}: cannot go from {current} to {wanted}")


class InvalidInput(BooklabError):
    """User input (project path, ref, option) that is refused."""


class SecretError(BooklabError):
    """A secret could not be decrypted (wrong runner token, or tampered)."""


class GitLabError(BooklabError):
    """GitLab answered with an error; ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int = 0):
        self.status = status
        super().__init__(message)


class RunnerUnavailable(BooklabError):
    """No live runner, or the runner holding a job stopped answering."""


class FetchFailed(BooklabError):
    """The repository could not be fetched at the requested commit."""


class BuildFailed(BooklabError):
    """repo2docker did not produce an image."""


class LaunchFailed(BooklabError):
    """The notebook container did not start."""


class SignatureError(BooklabError):
    """Something read from Redis is not signed with the runner token (forged, or the
    hub and runner tokens differ): it is not acted on."""
