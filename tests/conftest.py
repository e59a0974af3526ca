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
