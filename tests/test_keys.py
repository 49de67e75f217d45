import pytest

from booklab_spawner.keys import Keys


def test_key_names_are_literal():
    k = Keys("booklab:")
    assert k.conf == "booklab:conf"
    assert k.runners == "booklab:runners"
    assert k.heartbeat("r1") == "booklab:heartbeat:r1"
    assert k.runner("r1") == "booklab:runner:r1"
    assert k.claimed("r1") == "booklab:claimed:r1"
    assert k.commands("r1") == "booklab:commands:r1"
    assert k.queue == "booklab:queue"
    assert k.jobs == "booklab:jobs"
    assert k.legacy_status == "booklab:status"
    assert k.job("j1") == "booklab:job:j1"
    assert k.log("j1") == "booklab:log:j1"
    assert k.token("j1") == "booklab:token:j1"


def test_prefix_is_configurable_and_checked():
    assert Keys("lab2:").job("x") == "lab2:job:x"
    assert Keys("").queue == "queue"
    for bad in ("a b:", "x:y:", "pre\n", "a" * 80):
        with pytest.raises(ValueError):
            Keys(bad)


@pytest.mark.parametrize("bad", ["", "a:b", "a b", "../x", "x\x00", "ok\n", "-x", "a" * 200, None])
def test_ids_that_could_break_a_key_are_refused(bad):
    with pytest.raises(ValueError):
        Keys().job(bad)
    with pytest.raises(ValueError):
        Keys().heartbeat(bad)
