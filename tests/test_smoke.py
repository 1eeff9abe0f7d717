import transmamba


def test_import():
    assert transmamba.__version__
