"""Launch profiles: what config.yml accepts, which runners serve which profile, and
the container options a GPU profile gives (checked on the real Docker engine)."""

import pytest
import yaml
from docker.errors import APIError

import docker
from booklab_hub.config import ConfigError, load
from booklab_spawner import profiles as P
from booklab_spawner.crypto import Signer
from booklab_spawner.exceptions import LaunchFailed, SignatureError
from booklab_spawner.jobrequest import JobRequest
from booklab_spawner.runner.containers import devices
from tests.services import NOTEBOOK_IMAGE

GPU = {"name": "gpu", "description": "A100", "labels": {"gpu": "a100"}, "gpus": 1,
       "mem_limit": "16g", "cpu_limit": 4, "groups": ["lab/gpu-users"], "max_per_user": 1}


def test_profiles_parse_with_the_default_first():
    got = P.parse([GPU, {"name": "big", "labels": {"mem": "64G"}}])
    assert [p.name for p in got] == ["default", "gpu", "big"]
    gpu = got[1]
    assert gpu.labels == {"gpu": "a100"} and gpu.gpus == "1" and gpu.mem_limit == "16G"
    assert gpu.cpu_limit == 4.0 and gpu.groups == ("lab/gpu-users",) and gpu.max_per_user == 1
    assert got[0] == P.DEFAULT and not got[0].labels


def test_an_operators_default_replaces_the_built_in_one():
    got = P.parse([{"name": "default", "description": "Small", "mem_limit": "1G"}])
    assert [(p.name, p.description, p.mem_limit) for p in got] == [("default", "Small", "1G")]


@pytest.mark.parametrize("items,message", [
    ({"name": "gpu"}, "list of mappings"),
    (["gpu"], "mapping with a name"),
    ([{"name": "GPU"}], "profile name"),
    ([{"name": "9gpu"}], "profile name"),
    ([{"name": "a" * 31}], "profile name"),
    ([{"name": "gpu", "labels": ["gpu"]}], "labels must be a mapping"),
    ([{"name": "gpu", "labels": {"GPU": "x"}}], "not a valid runner label"),
    ([{"name": "gpu", "labels": {"gpu": "a 100"}}], "not a valid runner label"),
    ([{"name": "gpu", "gpus": "two"}], "gpus is a count"),
    ([{"name": "gpu", "gpus": 0.5}], "gpus is a count"),
    ([{"name": "gpu", "mem_limit": "lots"}], "mem_limit"),
    ([{"name": "gpu", "cpu_limit": -1}], "must not be negative"),
    ([{"name": "gpu", "groups": "lab"}], "groups is a list"),
    ([{"name": "gpu", "colour": "red"}], "unknown profile key 'colour'"),
    ([{"name": "gpu"}, {"name": "gpu"}], "defined twice"),
])
def test_bad_profiles_are_refused_saying_why(items, message):
    with pytest.raises(ValueError, match=message):
        P.parse(items)


def test_config_yml_takes_profiles_and_names_a_bad_one(tmp_path):
    good = {"gitlab": {"url": "https://gitlab.example.org", "client_id": "id",
                       "client_secret": "s"}, "runners": {"token": "x" * 40},
            "profiles": [GPU]}
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(good))
    assert load(str(path), environ={})["profiles"] == [GPU]
    path.write_text(yaml.safe_dump({**good, "profiles": [{"name": "gpu", "gpus": "x"}]}))
    with pytest.raises(ConfigError, match="profiles is not valid: profile 'gpu': gpus"):
        load(str(path), environ={})


@pytest.mark.parametrize("offered,served", [
    ({"cpus": "4", "memory": "1", "gpus": "0"}, ["default"]),
    ({"gpu": "a100", "gpus": "0"}, ["default"]),  # the label, but no GPU detected
    ({"gpu": "a100", "gpus": "2"}, ["gpu", "default"]),
    ({"gpu": "v100", "gpus": "2"}, ["default"]),
    ({"gpu": "a100", "gpus": "2", "mem": "64G"}, ["gpu", "big", "default"]),
])
def test_which_profiles_a_runner_serves(offered, served):
    profiles = P.parse([GPU, {"name": "big", "labels": {"mem": "64G"}}])
    assert P.served_by(profiles, offered) == served


def test_a_default_with_labels_is_served_only_by_runners_that_have_them():
    profiles = P.parse([{"name": "default", "labels": {"site": "a"}}])
    assert P.served_by(profiles, {"site": "b"}) == []
    assert P.served_by(profiles, {"site": "a"}) == ["default"]


def test_the_job_record_carries_the_profile_signed():
    signer = Signer("t" * 40)
    request = JobRequest(user="alice", server_name="", project="demo/hello", project_id="1",
                         ref="main", sha="a" * 40, clone_url="http://x/demo/hello.git",
                         ssh_url="", clone_method="proxy", mem_limit="16G", cpu_limit="4",
                         profile="gpu", labels={"gpu": "a100"}, gpus="1")
    record = request.record("j1", signer)
    needs = P.job_needs(record)
    assert (needs.name, needs.labels, needs.gpus) == ("gpu", {"gpu": "a100"}, "1")
    signer.check_job(record)
    for field, forged in [("labels", "{}"), ("gpus", ""), ("profile", "default")]:
        with pytest.raises(SignatureError):
            signer.check_job({**record, field: forged})
    # a record of the default profile with no labels: signed as before profiles
    plain = JobRequest(**{**request.__dict__, "profile": "", "labels": {}, "gpus": ""})
    signer.check_job(plain.record("j2", signer))


@pytest.mark.parametrize("gpus,count", [("1", 1), ("4", 4), ("all", -1)])
def test_a_gpu_request_becomes_a_docker_device_request(gpus, count):
    (request,) = devices({"gpus": gpus})["device_requests"]
    assert request["Count"] == count and request["Capabilities"] == [["gpu"]]


def test_no_gpu_no_device_request_and_garbage_refused():
    assert devices({}) == {} and devices({"gpus": ""}) == {}
    for bad in ("0", "x", "65", "-1"):
        with pytest.raises(LaunchFailed, match="Invalid GPU request"):
            devices({"gpus": bad})


def test_the_engine_gets_the_device_request(docker_client):
    """This machine has no GPU: the container is created with the request the runner
    passes, Docker records it, and starting it fails as Docker does without an NVIDIA
    runtime (a runner without GPUs never serves a GPU profile: see served_by)."""
    name = "booklab-test-profiles-gpu"
    try:
        docker_client.containers.get(name).remove(force=True)
    except docker.errors.NotFound:
        pass
    container = docker_client.containers.create(NOTEBOOK_IMAGE, command=["true"], name=name,
                                                **devices({"gpus": "2"}))
    try:
        container.reload()
        (req,) = container.attrs["HostConfig"]["DeviceRequests"]
        assert req["Count"] == 2 and req["Capabilities"] == [["gpu"]]
        with pytest.raises(APIError, match="could not select device driver"):
            container.start()
    finally:
        container.remove(force=True)
