"""What a runner offers: its operator's labels, checked, and the facts it detects."""

from __future__ import annotations

import subprocess
import sys

import pytest

from booklab_spawner.runner import labels

BIN = sys.executable.rsplit("/", 1)[0]


def test_labels_are_key_value_pairs():
    assert labels.parse(["gpu=a100", "site=lab-2", "mem=64G", "empty="]) == {
        "gpu": "a100", "site": "lab-2", "mem": "64G", "empty": ""}


@pytest.mark.parametrize("item, message", [
    ("gpu", "is not key=value"),
    ("GPU=a100", "label key 'GPU'"),
    ("-x=1", "label key '-x'"),
    ("gpu=a 100", "label value 'a 100'"),
    ("gpu=\"x\"", "label value"),
    ("gpu=a\x00", "label value"),
    ("k=" + "v" * 129, "at most 128"),
    ("k" * 64 + "=v", "at most 63"),
])
def test_bad_labels_are_refused_with_what_is_wrong(item, message):
    with pytest.raises(ValueError, match=message):
        labels.parse([item])


def test_a_label_given_twice_differently_and_too_many_labels_are_refused():
    with pytest.raises(ValueError, match="given twice"):
        labels.parse(["gpu=a100", "gpu=v100"])
    with pytest.raises(ValueError, match="at most 32"):
        labels.parse([f"k{i}=v" for i in range(33)])


def test_facts_come_from_the_engine_and_gpus_only_with_the_nvidia_runtime(tmp_path):
    engine = {"NCPU": 8, "MemTotal": 64 * 1024 ** 3, "Runtimes": {"runc": {}}}
    for name in ("nvidia0", "nvidia1", "nvidiactl"):
        (tmp_path / name).write_text("")
    devices = str(tmp_path / "nvidia[0-9]*")
    assert labels.detect(engine, devices) == {"cpus": "8", "memory": str(64 * 1024 ** 3),
                                              "gpus": "0"}
    engine["Runtimes"]["nvidia"] = {"path": "nvidia-container-runtime"}
    assert labels.detect(engine, devices)["gpus"] == "2"
    # the operator's label wins over a fact (to offer less than the machine has)
    assert labels.offered({"gpus": "1", "site": "x"}, labels.detect(engine, devices)) == {
        "cpus": "8", "memory": str(64 * 1024 ** 3), "gpus": "1", "site": "x"}


def test_the_runner_refuses_to_start_with_a_bad_label():
    """Before it touches Redis or Docker (neither is given here)."""
    r = subprocess.run([f"{BIN}/booklab-runner", "--label=Bad Key=1",
                        "--redis-url=redis://127.0.0.1:1/0"],
                       env={"PATH": BIN, "BOOKLAB_RUNNER_TOKEN": "t" * 64},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "label key 'Bad Key'" in r.stderr + r.stdout, r.stderr[-2000:]
