import pytest

from booklab_spawner.names import is_valid, server_name


@pytest.mark.parametrize("project,ref", [
    ("demo/hello", "main"), ("a/b/c/Very.Long_Project-Name-Here", "feature/some-branch"),
    ("g/1234", "v1.0.0"), ("g/x", "a" * 40), ("g/___", "---"), ("g/Ünïcode", "ref"),
])
def test_names_are_valid_for_jupyterhub(project, ref):
    name = server_name(project, ref)
    assert is_valid(name) and len(name) <= 30


def test_names_are_stable_and_distinct():
    assert server_name("demo/hello", "main") == server_name("demo/hello", "main")
    assert server_name("demo/hello", "main").startswith("hello-main-")
    names = {server_name("demo/hello", r) for r in ("main", "Main", "main2", "feature/main")}
    names |= {server_name("other/hello", "main")}
    assert len(names) == 5
