import os

from hypothesis import HealthCheck, settings

# CI runs a pinned, derandomized profile so that a red build is reproducible; "long" is for
# hunting (HYPOTHESIS_PROFILE=long pytest).
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=60,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile("long", max_examples=5000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


# Tests that start processes, ptys or long searches take seconds each: they are marked slow so
# that `pytest -m "not slow"` is a quick inner loop. CI and the README's command run them all.
SLOW_FILES = {"test_e2e.py", "test_fuzz.py"}
SLOW_TESTS = {"test_keygen_sign_verify_and_run", "test_tag_commands",
              "test_the_same_seed_gives_the_same_summary_on_a_local_cluster",
              "test_a_real_scheduler_with_two_workers_gives_the_single_process_summary"}


def pytest_collection_modifyitems(config, items):
    import pytest

    for item in items:
        if item.path.name in SLOW_FILES or item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
