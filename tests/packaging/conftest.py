"""Layer 4 of the test suite: the project as a user installs it."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "packaging: builds the wheel and installs it in a fresh venv "
        "(slow, needs PyPI); deselect with -m 'not packaging'",
    )
