import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from tests.helpers import DEV_DATA  # noqa: E402


@pytest.fixture(scope="session")
def dev_data():
    """`../shared/data/dev` beside the repo root; tests using it skip where it is absent."""
    if not (DEV_DATA / "videos" / "metadata.json").is_file():
        pytest.skip(f"dev data not found at {DEV_DATA}")
    return DEV_DATA


@pytest.fixture(scope="session")
def tiny_manifest_path(tmp_path_factory):
    from tests.helpers import tiny_manifest

    return tiny_manifest(tmp_path_factory.mktemp("tiny_models"))


# Module-scoped fixtures that extract, train or encode for seconds to a minute: a test that uses one is slow.
SLOW_FIXTURES = {"dev_extraction", "recipe_run", "two_source_run", "three_class_run", "oversized_clip"}


def pytest_collection_modifyitems(items):
    """`slow` for the tests of a slow fixture (the quick loop, `pytest -m "not slow"`, leaves them out)."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
