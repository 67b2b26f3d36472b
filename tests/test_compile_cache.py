"""JAX's persistent compilation cache: on by default in the CLI, off with ``--no-compile-cache``; a second
compile of the same program in a fresh in-memory state is a cache hit (JAX's own monitoring event)."""

import json

import jax
import jax.numpy as jnp
import pytest
from jax import monitoring

from cnnjax.training import compile_cache
from train import config as C
from train.main import main as run_main

HIT = "/jax/compilation_cache/cache_hits"


@pytest.fixture
def hits():
    """Counts JAX's cache-hit events while the test runs; JAX's cache settings are restored afterwards."""
    count = {"n": 0}

    def listener(event: str, **_: object) -> None:
        count["n"] += event == HIT

    old = {k: getattr(jax.config, k) for k in compile_cache.KEYS}
    monitoring.register_event_listener(listener)
    yield count
    monitoring.unregister_event_listener(listener)
    compile_cache._set_dir(old.pop(compile_cache.KEYS[0]))
    for k, v in old.items():
        jax.config.update(k, v)


def _compile_twice(n: int) -> None:
    """Compile the same fresh program twice, forgetting JAX's in-memory executables in between."""
    f = jax.jit(lambda x: jnp.sin(x) * n + jnp.cumsum(x))
    x = jnp.ones((n,))
    jax.block_until_ready(f(x))
    jax.clear_caches()
    jax.block_until_ready(f(x))


def test_a_cached_program_is_loaded_not_compiled_and_off_caches_nothing(hits, tmp_path):
    folder = tmp_path / "jit"
    assert compile_cache.configure(folder, min_compile_time_s=0) == folder
    _compile_twice(37)
    assert hits["n"] >= 1 and any(folder.iterdir())
    hits["n"] = 0
    assert compile_cache.configure("off") is None and jax.config.jax_compilation_cache_dir is None
    _compile_twice(41)
    assert hits["n"] == 0  # the negative case: without the cache the second compile is a real one


def test_enabled_restores_the_previous_folder(hits, tmp_path):
    before = jax.config.jax_compilation_cache_dir
    with compile_cache.enabled(tmp_path / "a") as folder:
        assert jax.config.jax_compilation_cache_dir == str(folder) == str(tmp_path / "a")
    assert jax.config.jax_compilation_cache_dir == before


def test_auto_follows_jax_then_cnnjax_cache(monkeypatch, tmp_path, hits):
    compile_cache._set_dir(None)
    monkeypatch.setenv("CNNJAX_CACHE", str(tmp_path))
    assert compile_cache.default_dir() == tmp_path / "jax"
    compile_cache._set_dir(str(tmp_path / "mine"))
    assert compile_cache.configure("auto") == tmp_path / "mine"


def test_cli_default_is_on_and_the_flag_turns_it_off():
    parser = C.build_parser()
    assert parser.parse_args([]).compile_cache == "auto"
    assert parser.parse_args(["--no-compile-cache"]).compile_cache == "off"
    assert parser.parse_args(["--compile-cache", "/x"]).compile_cache == "/x"


@pytest.mark.slow  # ~5 s: a benchmark run (the cache-hit test above stays in the fast tier)
def test_benchmark_prints_one_json_line_and_caches_in_the_folder_given(hits, tmp_path, capsys):
    folder = tmp_path / "cli-jit"
    assert run_main(["--arch", "lenet5", "--benchmark", "--image-size", "32", "--batch-size", "8",
                     "--benchmark-steps", "2", "--compile-cache", str(folder)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("images_per_sec", "arch", "batch_size", "image_size", "precision", "devices", "first_step_s"):
        assert key in result
    assert result["images_per_sec"] > 0 and result["arch"] == "lenet5"
    assert result["compile_cache"] == str(folder) and folder.is_dir()
