import pytest

from afs_core.config import env_bool, env_float, env_int, env_list, load_env, parse_duration
from afs_core.errors import ConfigurationError


def test_dotenv_values_are_read_and_the_real_environment_wins(monkeypatch):
    with open(".env", "w") as handle:
        handle.write("AFS_CONSOLE=false\nSLACK_CHANNEL=#from-file\n")
    monkeypatch.setenv("AFS_CONSOLE", "true")
    settings = load_env()
    assert settings["AFS_CONSOLE"] == "true" and settings["SLACK_CHANNEL"] == "#from-file"


def test_load_env_does_not_touch_the_process_environment():
    import os

    with open(".env", "w") as handle:
        handle.write("SLACK_CHANNEL=#x\n")
    load_env()
    assert "SLACK_CHANNEL" not in os.environ


@pytest.mark.parametrize(("raw", "value"), [("true", True), ("ON", True), ("0", False), ("", None)])
def test_env_bool(raw, value):
    assert env_bool({"K": raw}, "K", None) is value


@pytest.mark.parametrize(
    ("helper", "raw", "message"),
    [
        (env_bool, "maybe", "K must be true or false"),
        (env_float, "ten", "K must be a number"),
        (env_float, "nan", "K must be at least"),
        (env_int, "1.5", "K must be a whole number"),
        (env_int, "-3", "K must be at least 0"),
    ],
)
def test_bad_values_name_the_setting(helper, raw, message):
    with pytest.raises(ConfigurationError, match=message):
        helper({"K": raw}, "K", 1)


def test_numbers_and_lists():
    assert env_float({"K": " 2.5 "}, "K", 1.0) == 2.5 and env_float({}, "K", 1.0) == 1.0
    assert env_int({"K": "7"}, "K", 1) == 7
    assert env_list({"K": "a@x, ,b@y,"}, "K") == ["a@x", "b@y"]


@pytest.mark.parametrize("value", ["inf", "nan", "0", "1e10", "abc", None])
def test_timeouts_must_be_finite_and_sensible(value):
    from afs_core.config import check_timeout

    with pytest.raises(ConfigurationError, match="X_TIMEOUT"):
        check_timeout(value, "X_TIMEOUT")
    assert check_timeout("2.5", "X_TIMEOUT") == 2.5


@pytest.mark.parametrize(("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("30m", 1800.0), ("2h", 7200.0),
                                               ("1h30m", 5400.0), (" 1.5h ", 5400.0), ("1d", 86400.0)])
def test_durations_read_as_people_write_them(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5x", "0", "0s", "-3m", "m5", "1h-30m"])
def test_a_duration_that_is_not_one_says_how_to_write_it(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)
