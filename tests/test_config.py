"""Configuration: defaults, precedence (flag > environment > .env > default) and one-line errors."""

from pathlib import Path

import pytest

from login_pipeline.config import SETTINGS, ConfigError, defaults, load
from login_pipeline.engines.kafka_python import client_security


def test_defaults_are_the_documented_ones():
    config = load([], "test", environ={})
    assert config.input_bootstrap_servers == ("localhost:29092",)
    assert config.output_bootstrap_servers == ("localhost:29093",)
    assert (config.input_topic, config.output_topic, config.dlq_topic) == (
        "user-login",
        "processed-logins",
        "user-login-dlq",
    )
    assert config.consumer_group == "login-processor"
    assert config.insights_every == 100
    assert config.pii_hash_key is None
    assert client_security(config) == {"security_protocol": "PLAINTEXT"}
    assert config.kafka_client == "kafka-python"


def test_flags_override_the_environment_and_blank_values_mean_unset():
    config = load(["--input-topic", "from-flag"], "test", environ={"INPUT_TOPIC": "from-env", "OUTPUT_TOPIC": " "})
    assert config.input_topic == "from-flag"
    assert config.output_topic == "processed-logins"


def test_the_dotenv_file_fills_in_but_never_overrides_the_environment(tmp_path, monkeypatch):
    env_file = tmp_path / ".env"
    env_file.write_text("INPUT_TOPIC=from-dotenv\nOUTPUT_TOPIC=from-dotenv-too\n")
    monkeypatch.setenv("INPUT_TOPIC", "from-env")
    monkeypatch.delenv("OUTPUT_TOPIC", raising=False)
    config = load(["--env-file", str(env_file)], "test")
    assert (config.input_topic, config.output_topic) == ("from-env", "from-dotenv-too")


def test_several_bootstrap_servers_and_ipv6_literals_are_accepted():
    config = load([], "test", environ={"INPUT_BOOTSTRAP_SERVERS": "a:9092, b.example.com:9093,[::1]:9094"})
    assert config.input_bootstrap_servers == ("a:9092", "b.example.com:9093", "[::1]:9094")


def test_sasl_settings_pass_through_to_the_clients(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("certificate")
    config = load(
        [],
        "test",
        environ={
            "SECURITY_PROTOCOL": "sasl_ssl",
            "SASL_MECHANISM": "scram-sha-512",
            "SASL_USERNAME": "svc",
            "SASL_PASSWORD": "pw",
            "SSL_CAFILE": str(ca),
        },
    )
    assert client_security(config) == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc",
        "sasl_plain_password": "pw",
        "ssl_cafile": str(ca),
    }


@pytest.mark.parametrize(
    "environ, complaint",
    [
        ({"INSIGHTS_EVERY": "0"}, "INSIGHTS_EVERY='0' must be a whole number from 1 to 1,000,000,000"),
        ({"KAFKA_CLIENT": "librdkafka"}, "KAFKA_CLIENT='librdkafka' is not one of kafka-python, confluent-kafka"),
        ({"BATCH_SIZE": "-5"}, "BATCH_SIZE='-5' must be a whole number from 1 to 100,000"),
        ({"BATCH_SIZE": "²"}, "BATCH_SIZE='²' must be a whole number"),  # str.isdigit() says yes
        ({"BATCH_SIZE": "２０"}, "BATCH_SIZE='２０' must be a whole number"),  # int() says 20
        ({"BATCH_SIZE": "٣"}, "BATCH_SIZE='٣' must be a whole number"),
        ({"BATCH_SIZE": "100001"}, "BATCH_SIZE='100001' must be a whole number from 1 to 100,000"),
        ({"BATCH_SIZE": "1" + "0" * 40}, "BATCH_SIZE='1" + "0" * 40 + "' must be a whole number"),
        ({"BATCH_SIZE": "1e3"}, "BATCH_SIZE='1e3' must be a whole number"),
        ({"BATCH_SIZE": "0x10"}, "BATCH_SIZE='0x10' must be a whole number"),
        ({"BATCH_SIZE": "1_000"}, "BATCH_SIZE='1_000' must be a whole number"),
        ({"INSIGHTS_EVERY": "1000000001"}, "INSIGHTS_EVERY='1000000001' must be a whole number from 1 to"),
        ({"OUTPUT_BOOTSTRAP_SERVERS": "host:２９０９２"}, "'host:２９０９２' is not host:port"),
        ({"OUTPUT_BOOTSTRAP_SERVERS": "host:0"}, "'host:0' is not host:port"),
        ({"OUTPUT_BOOTSTRAP_SERVERS": "host:9092,"}, "'' is not host:port"),
        ({"SECURITY_PROTOCOL": "ſasl_ssl"}, "SECURITY_PROTOCOL='ſasl_ssl' is not one of"),  # "ſ".upper() == "S"
        ({"SECURITY_PROTOCOL": "PLAINTEXT\x1b[2J"}, "SECURITY_PROTOCOL='PLAINTEXT\\x1b[2J' is not one of"),
        ({"INPUT_TOPIC": "t" * 10_000}, "INPUT_TOPIC='" + "t" * 60 + "'... (10,000 characters) must be"),
        ({"OUTPUT_BOOTSTRAP_SERVERS": "host:99999"}, "'host:99999' is not host:port"),
        ({"INPUT_TOPIC": "bad topic"}, "INPUT_TOPIC='bad topic' must be 1-249 letters"),
        ({"CONSUMER_GROUP": "x" * 250}, "CONSUMER_GROUP="),
        ({"DLQ_TOPIC": "processed-logins"}, "OUTPUT_TOPIC and DLQ_TOPIC must differ"),
        ({"PII_HASH_KEY": "fifteen-bytes.."}, "PII_HASH_KEY must be at least 16 bytes"),
        ({"SECURITY_PROTOCOL": "SASL_SSL", "SASL_MECHANISM": "GSSAPI"}, "SASL_MECHANISM must be one of"),
        ({"SECURITY_PROTOCOL": "SASL_PLAINTEXT", "SASL_MECHANISM": "PLAIN"}, "SASL_USERNAME is required"),
        ({"SSL_CAFILE": "/no/such/ca.pem"}, "SSL_CAFILE='/no/such/ca.pem' is not a readable file"),
        ({"LIVE_INSIGHTS": "yes"}, "LIVE_INSIGHTS='yes' is not one of on, off"),
        ({"INSIGHTS_TOPIC": "user-login-dlq"}, "DLQ_TOPIC and INSIGHTS_TOPIC must differ"),
        ({"ALERTS_TOPIC": "login-insights"}, "INSIGHTS_TOPIC and ALERTS_TOPIC must differ"),
        ({"ALERTS_TOPIC": "alerts\x1b]0;x\x07"}, "ALERTS_TOPIC='alerts\\x1b]0;x\\x07' must be 1-249 letters"),
        ({"WINDOW_SIZE_S": "0"}, "WINDOW_SIZE_S='0' must be a whole number from 1 to 86,400"),
        ({"WINDOW_GRACE_S": "-1"}, "WINDOW_GRACE_S='-1' must be a whole number from 0 to 86,400"),
        ({"WINDOW_IDLE_S": "86401"}, "WINDOW_IDLE_S='86401' must be a whole number from 1 to 86,400"),
        ({"ALERT_LOCALES": "1"}, "ALERT_LOCALES='1' must be a whole number from 2 to 10,000"),
        ({"ALERT_BURST_WINDOW_S": "604801"}, "ALERT_BURST_WINDOW_S='604801' must be a whole number from 1 to 604,800"),
        ({"ALERT_STATE_KEYS": "0"}, "ALERT_STATE_KEYS='0' must be a whole number from 1 to 10,000,000"),
    ],
)
def test_invalid_settings_raise_one_line_naming_the_setting(environ, complaint):
    with pytest.raises(ConfigError) as error:
        load([], "test", environ=environ)
    assert complaint in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("value, expected", [("1", 1), ("100000", 100_000), (" 250 ", 250), ("007", 7)])
def test_whole_numbers_in_range_are_accepted(value, expected):
    assert load([], "test", environ={"BATCH_SIZE": value}).batch_size == expected


def test_secrets_stay_out_of_the_config_repr():
    config = load(
        [],
        "test",
        environ={
            "PII_HASH_KEY": "super-secret-key-material",
            "SECURITY_PROTOCOL": "SASL_SSL",
            "SASL_MECHANISM": "PLAIN",
            "SASL_USERNAME": "u",
            "SASL_PASSWORD": "hunter2-password",
        },
    )
    assert "super-secret" not in repr(config) and "hunter2" not in repr(config)


def test_help_documents_every_setting(capsys):
    with pytest.raises(SystemExit):
        load(["--help"], "test", environ={})
    text = capsys.readouterr().out
    for flag in (
        "--input-bootstrap-servers",
        "--output-bootstrap-servers",
        "--input-topic",
        "--output-topic",
        "--dlq-topic",
        "--consumer-group",
        "--pii-hash-key-file",
        "--insights-every",
        "--batch-size",
        "--security-protocol",
        "--kafka-client",
        "--sasl-mechanism",
        "--sasl-username",
        "--sasl-password-file",
        "--ssl-cafile",
    ):
        assert flag in text


def test_env_example_names_every_setting_with_its_default():
    lines = (Path(__file__).parent.parent / ".env.example").read_text().splitlines()
    assigned = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    assert set(assigned) == {setting.env for setting in SETTINGS}
    for setting in SETTINGS:
        assert assigned[setting.env] == (setting.default or "")


@pytest.mark.parametrize("value", ["confluent-kafka", "CONFLUENT-KAFKA", " kafka-python "])
def test_the_kafka_client_is_chosen_by_name(value):
    assert load([], "test", environ={"KAFKA_CLIENT": value}).kafka_client == value.strip().lower()


def test_each_engine_maps_the_security_settings_to_its_clients_names(tmp_path):
    from login_pipeline.engines import confluent

    ca = tmp_path / "ca.pem"
    ca.write_text("certificate")
    config = load(
        [],
        "test",
        environ={
            "SECURITY_PROTOCOL": "SASL_SSL",
            "SASL_MECHANISM": "SCRAM-SHA-512",
            "SASL_USERNAME": "svc",
            "SASL_PASSWORD": "pw",
            "SSL_CAFILE": str(ca),
        },
    )
    assert confluent.client_security(config) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc",
        "sasl.password": "pw",
        "ssl.ca.location": str(ca),
    }


def test_the_live_insights_settings_reach_the_windows_and_rules():
    config = load(
        [],
        "test",
        environ={
            "WINDOW_GRACE_S": "0",
            "ALERT_STUFFING_USERS": "2",
            "ALERT_STUFFING_WINDOW_S": "60",
            "LIVE_INSIGHTS": "OFF",
        },
    )
    assert config.windows.grace_s == 0 and not config.live_insights
    assert (config.alerts.credential_stuffing.threshold, config.alerts.credential_stuffing.window_s) == (2, 60)


def test_the_readme_configuration_table_lists_every_setting_with_its_declared_default():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n\n| setting | default | meaning |\n|---|---|---|\n", 1)[1]
    documented = {}
    for row in table.split("\n\n", 1)[0].splitlines():
        names, shown_defaults = row.split(" | ")[0:2]
        names_list = [name.strip(" |`") for name in names.split(",")]
        # One default per name where a row names several settings; one value, commas and all, otherwise.
        parts = shown_defaults.split(",") if len(names_list) > 1 else [shown_defaults]
        defaults_list = [value.strip(" `") for value in parts]
        if len(defaults_list) == 1:
            defaults_list *= len(names_list)
        documented.update(zip(names_list, defaults_list))
    assert set(documented) == {setting.env for setting in SETTINGS}
    for setting in SETTINGS:
        assert documented[setting.env] == (setting.default or "unset"), setting.env


def test_every_config_field_is_set_by_exactly_one_setting():
    paths = [setting.path for setting in SETTINGS]
    assert len(paths) == len(set(paths))
    config = defaults()  # a field no setting sets has no default here: building the record would fail
    assert config.windows.size_s == 60 and config.alerts.login_burst.window_s == 60 and config.metrics_port == 9400


@pytest.mark.parametrize("flag", ["--pii-hash-key", "--sasl-password", "--pii-hash", "--sasl-pass"])
def test_no_secret_is_taken_from_the_command_line_not_even_by_an_abbreviation(flag, capsys):
    with pytest.raises(SystemExit):
        load([flag, "a-secret-of-at-least-16-bytes"], "test", environ={})
    assert "a-secret-of-at-least-16-bytes" not in capsys.readouterr().err


def test_secrets_come_from_the_environment_or_from_a_file_a_flag_or_NAME_FILE_names(tmp_path):
    key_file, password_file = tmp_path / "key", tmp_path / "password"
    key_file.write_text("key-from-a-file-0123456789\n")
    password_file.write_text("password-from-a-file")
    sasl = {"SECURITY_PROTOCOL": "SASL_PLAINTEXT", "SASL_MECHANISM": "PLAIN", "SASL_USERNAME": "u"}
    config = load(
        ["--pii-hash-key-file", str(key_file)], "test", environ={**sasl, "SASL_PASSWORD_FILE": str(password_file)}
    )
    assert config.pii_hash_key == b"key-from-a-file-0123456789" and config.sasl_password == "password-from-a-file"
    assert (
        load([], "test", environ={"PII_HASH_KEY": "key-from-the-environment"}).pii_hash_key
        == b"key-from-the-environment"
    )
    with pytest.raises(ConfigError, match="PII_HASH_KEY_FILE=.* cannot be read"):
        load([], "test", environ={"PII_HASH_KEY_FILE": str(tmp_path / "missing")})


@pytest.mark.parametrize("key", [None, "", "   "])
def test_with_the_key_required_a_missing_or_empty_one_is_one_line_not_a_random_key(key):
    environ = {"REQUIRE_PII_HASH_KEY": "on"} | ({} if key is None else {"PII_HASH_KEY": key})
    with pytest.raises(ConfigError, match=r"^PII_HASH_KEY is required \(REQUIRE_PII_HASH_KEY=on\)"):
        load([], "test", environ=environ)
    assert load([], "test", environ={**environ, "PII_HASH_KEY": "the-groups-key-0123"}).require_pii_hash_key


@pytest.mark.parametrize("value", ["evil host", "a,,b", "localhost;rm", "[::1", "x" * 300])
def test_an_allowed_host_that_is_no_host_name_is_one_line_naming_it(value):
    with pytest.raises(ConfigError, match="HTTP_ALLOWED_HOSTS"):
        load([], "test", environ={"HTTP_ALLOWED_HOSTS": value})


def test_allowed_hosts_take_names_addresses_and_a_star():
    config = load([], "test", environ={"HTTP_ALLOWED_HOSTS": "Dash.Example, 10.0.0.5,[::1],*"})
    assert config.http_allowed_hosts == ("dash.example", "10.0.0.5", "[::1]", "*")


GOOD_TOKEN = "Zm9vYmFyLWJhei1xdXV4LTAxMjM0NTY3ODk-_.~+/="


@pytest.mark.parametrize(
    "token",
    ["short", "a" * 31, "a" * 513, "spaces are not token " + "a" * 20, "new\nline" + "a" * 30, "é" * 40, "a=b" * 12],
)
def test_an_http_token_a_header_cannot_carry_or_anyone_could_guess_is_refused_without_echoing_it(token):
    with pytest.raises(ConfigError, match="^HTTP_TOKEN must be") as error:
        load([], "test", environ={"HTTP_TOKEN": token})
    assert token.strip() not in str(error.value)


def test_the_http_token_comes_from_the_environment_or_a_file_never_a_flag(tmp_path, capsys):
    assert load([], "test", environ={"HTTP_TOKEN": GOOD_TOKEN}).http_token == GOOD_TOKEN
    secret = tmp_path / "token"
    secret.write_text(GOOD_TOKEN + "\n")
    assert load([], "test", environ={"HTTP_TOKEN_FILE": str(secret)}).http_token == GOOD_TOKEN
    assert load(["--http-token-file", str(secret)], "test", environ={}).http_token == GOOD_TOKEN
    assert defaults().http_token is None
    with pytest.raises(SystemExit):
        load(["--http-token", GOOD_TOKEN], "test", environ={})
    assert GOOD_TOKEN not in capsys.readouterr().err


@pytest.mark.parametrize("value", ["9400", "-1", "65536", "９４０１", "0x24d1", "9401.0"])
def test_a_probe_port_that_is_the_metrics_port_or_no_port_is_refused_in_one_line(value):
    with pytest.raises(ConfigError, match="^PROBE_PORT"):
        load([], "test", environ={"METRICS_PORT": "9400", "PROBE_PORT": value})


def test_the_probe_port_is_off_unless_set():
    assert defaults().probe_port == 0
    assert load([], "test", environ={"PROBE_PORT": " 9401 "}).probe_port == 9401
