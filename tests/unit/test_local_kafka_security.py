"""The local broker's SASL_SSL mode without a broker: its settings, credentials and the
rules that keep a data directory in the mode it was formatted with."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import pytest

from streamer.errors import LocalKafkaError
from streamer.kafka import local
from streamer.kafka.local import LocalKafka, client_config, topology_config


@pytest.fixture
def no_keytool(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Certificates as empty files: what is made, not how (the integration test makes real
    ones). Returns the directories certificates were made in."""
    made: list[Path] = []

    def fake(_keytool: str, tls: Path, _password: str) -> None:
        tls.mkdir(parents=True, exist_ok=True)
        for name in ("ca.pem", "broker.p12"):
            (tls / name).write_text("")
        made.append(tls)

    monkeypatch.setattr(local, "_make_certificates", fake)
    monkeypatch.setattr(local, "_keytool", lambda _java: "keytool")
    return made


def _format(broker: LocalKafka) -> None:
    (broker.home / "data").mkdir(parents=True, exist_ok=True)
    (broker.home / "data" / "meta.properties").write_text("")


def _properties(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def test_plain_mode_is_unchanged(tmp_path: Path) -> None:
    broker = LocalKafka(port=30000, data_dir=tmp_path)
    props = _properties(local._write_config(broker))
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:30000,CONTROLLER://127.0.0.1:30001"
    assert props["listener.security.protocol.map"] == "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    assert not any(k.startswith(("sasl", "ssl", "listener.name")) for k in props)
    assert client_config(broker) == topology_config(broker) == {}


def test_sasl_ssl_broker_settings(tmp_path: Path, no_keytool: list[Path]) -> None:
    broker = LocalKafka(port=30000, data_dir=tmp_path, sasl_ssl=True)
    security = local._ensure_security("java", broker)
    path = local._write_config(broker, security)
    props = _properties(path)
    assert props["listeners"] == "SASL_SSL://127.0.0.1:30000,CONTROLLER://127.0.0.1:30001"
    assert props["advertised.listeners"] == "SASL_SSL://127.0.0.1:30000"
    assert props["listener.security.protocol.map"] == "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT"
    assert props["inter.broker.listener.name"] == "SASL_SSL"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
    login = props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    assert login == (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="streamer" password="{security.password}";'
    )
    store = str(tmp_path / "tls" / "broker.p12")
    assert props["ssl.keystore.location"] == props["ssl.truststore.location"] == store
    assert props["ssl.keystore.password"] == security.store_password
    assert path.stat().st_mode & 0o777 == 0o600  # it holds the passwords


def test_credentials_are_generated_kept_private_and_reused_once_formatted(
    tmp_path: Path, no_keytool: list[Path]
) -> None:
    broker = LocalKafka(data_dir=tmp_path, sasl_ssl=True)
    first = local._ensure_security("java", broker)
    assert re.fullmatch(r"[A-Za-z0-9_-]{24}", first.password)
    assert first.username == "streamer" and first.store_password != first.password
    for secret in (broker.password_file, broker.security_file):
        assert secret.stat().st_mode & 0o777 == 0o600
    assert broker.password_file.read_text() == first.password + "\n"
    assert first.password not in broker.security_file.read_text()
    # Not formatted yet (a failed format): everything afresh.
    assert local._ensure_security("java", broker).password != first.password
    _format(broker)
    kept = local._ensure_security("java", broker)
    assert kept == local._load_security(broker)
    assert len(no_keytool) == 2  # certificates are reused too
    assert client_config(broker) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "streamer",
        "ssl.ca.location": str(tmp_path / "tls" / "ca.pem"),
        "sasl.password": kept.password,
    }
    by_file = topology_config(broker)
    assert "sasl.password" not in by_file
    assert by_file["sasl.password_file"] == str(broker.password_file)


def test_missing_certificates_are_made_again(tmp_path: Path, no_keytool: list[Path]) -> None:
    broker = LocalKafka(data_dir=tmp_path, sasl_ssl=True)
    local._ensure_security("java", broker)
    _format(broker)
    broker.ca_file.unlink()
    local._ensure_security("java", broker)
    assert len(no_keytool) == 2 and broker.ca_file.exists()


def test_a_given_password_is_used(tmp_path: Path, no_keytool: list[Path]) -> None:
    broker = LocalKafka(data_dir=tmp_path, sasl_ssl=True, username="app", password="s3cret-1")
    security = local._ensure_security("java", broker)
    assert (security.username, security.password) == ("app", "s3cret-1")


def test_scram_credential_is_salted_not_plain() -> None:
    security = local._Security("streamer", "pa55-word", "store")
    arg = local._scram_credential(security)
    assert "pa55-word" not in arg
    found = re.fullmatch(
        r'SCRAM-SHA-512=\[name=streamer,iterations=(\d+),salt="([^"]+)",saltedpassword="([^"]+)"\]',
        arg,
    )
    assert found is not None, arg
    iterations, salt = int(found[1]), base64.b64decode(found[2])
    assert iterations >= 4096  # Kafka's minimum for SCRAM
    expected = hashlib.pbkdf2_hmac("sha512", b"pa55-word", salt, iterations)
    assert base64.b64decode(found[3]) == expected


def test_a_data_directory_keeps_its_mode(tmp_path: Path, no_keytool: list[Path]) -> None:
    plain = LocalKafka(data_dir=tmp_path / "plain")
    _format(plain)
    local._check_mode(plain)
    with pytest.raises(LocalKafkaError, match="holds a PLAINTEXT broker"):
        local._check_mode(LocalKafka(data_dir=tmp_path / "plain", sasl_ssl=True))

    secure = LocalKafka(data_dir=tmp_path / "secure", sasl_ssl=True)
    local._check_mode(secure)  # not formatted: any mode
    local._check_mode(LocalKafka(data_dir=tmp_path / "secure"))
    local._ensure_security("java", secure)
    _format(secure)
    local._check_mode(secure)
    with pytest.raises(LocalKafkaError, match="holds a SASL_SSL broker; start it with --sasl-ssl"):
        local._check_mode(LocalKafka(data_dir=tmp_path / "secure"))
    with pytest.raises(LocalKafkaError, match="fixed when it was formatted"):
        local._check_mode(LocalKafka(data_dir=secure.home, sasl_ssl=True, password="other"))
    with pytest.raises(LocalKafkaError, match="fixed when it was formatted"):
        local._check_mode(LocalKafka(data_dir=secure.home, sasl_ssl=True, username="other"))
    secure.password_file.unlink()
    with pytest.raises(LocalKafkaError, match=r"sasl\.password or security\.json there is missing"):
        local._check_mode(secure)


@pytest.mark.parametrize("bad", ["", "a b", 'quo"te', "comma,", "x" * 129, "br]acket"])
def test_credentials_must_need_no_quoting(tmp_path: Path, bad: str) -> None:
    with pytest.raises(LocalKafkaError, match="may hold only"):
        local._check_mode(LocalKafka(data_dir=tmp_path, sasl_ssl=True, password=bad))
    with pytest.raises(LocalKafkaError, match="may hold only"):
        local._check_mode(LocalKafka(data_dir=tmp_path, sasl_ssl=True, username=bad))
