"""Settings: stack.yaml's raw values validated once into a frozen object, with the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from matrix_stack.base.errors import SettingsError, UsageError
from matrix_stack.core.settings import (
    DEFAULT_ELEMENT_SOURCE,
    DatabaseMode,
    FederationMode,
    MailMode,
    MailSecurity,
    RegistrationMode,
    Settings,
    TlsMode,
    from_mapping,
)

NAME = "matrix.example.org"


def settings_with(root: Path = Path("/"), /, **values: Any) -> Settings:
    return from_mapping({"server_name": NAME, **values}, root)


def refusal(root: Path = Path("/"), /, **values: Any) -> SettingsError:
    with pytest.raises(SettingsError) as caught:
        from_mapping(values, root)
    return caught.value


def test_from_mapping_with_only_server_name_gives_documented_defaults() -> None:
    settings = from_mapping({"server_name": NAME})

    assert settings == Settings(
        server_name=NAME,
        element_domain="element.matrix.example.org",
        element_version="latest",
        element_source=DEFAULT_ELEMENT_SOURCE,
        tls=TlsMode.SELF_SIGNED,
        tls_cert="",
        tls_key="",
        acme_email="",
        turn_enable=True,
        turn_domain=NAME,
        turn_external_ip="",
        turn_listening_ip="",
        federation=FederationMode.ALLOW_LIST,
        federation_domains=(),
        registration=RegistrationMode.DISABLED,
        behind_proxy=False,
        proxy_addresses=("127.0.0.1/32", "::1/128"),
        database=DatabaseMode.SQLITE,
        mail=MailMode.OFF,
        mail_from="Matrix <noreply@matrix.example.org>",
        mail_relay_port=587,
        mail_relay_security=MailSecurity.STARTTLS,
        mail_password_reset=True,
        admin_email="",
    )
    assert settings.warnings == ()
    assert settings.element_on_own_domain is True


def test_default_element_source_is_the_upstream_release_url_template() -> None:
    assert DEFAULT_ELEMENT_SOURCE == (
        "https://github.com/element-hq/element-web/releases/download/"
        "v{version}/element-v{version}.tar.gz"
    )


@pytest.mark.parametrize("empty", [None, ""])
def test_from_mapping_with_empty_derived_names_takes_their_defaults(empty: str | None) -> None:
    settings = settings_with(element_domain=empty, turn_domain=empty, element_version=empty)

    assert (settings.element_domain, settings.turn_domain, settings.element_version) == (
        "element.matrix.example.org",
        NAME,
        "latest",
    )


def test_settings_are_frozen() -> None:
    settings = settings_with()

    with pytest.raises(AttributeError):
        settings.server_name = "other.example.org"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("matrix.example.org", "matrix.example.org"),
        ("Matrix.Example.ORG", "matrix.example.org"),
        ("matrix.example.org.", "matrix.example.org"),
        ("  matrix.example.org  ", "matrix.example.org"),
        ("localhost", "localhost"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("a" * 63 + ".example.org", "a" * 63 + ".example.org"),
    ],
)
def test_server_name_valid_is_normalised(given: str, expected: str) -> None:
    assert settings_with(server_name=given).server_name == expected


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        ("", "is empty: a DNS name such as matrix.example.org is needed"),
        ("   ", "is empty: a DNS name such as matrix.example.org is needed"),
        ("matrix.example.org:8448", "has a port: give the host name only"),
        ("a" * 64 + ".example.org", "is not a DNS name"),
        ("-matrix.example.org", "is not a DNS name"),
        ("matrix-.example.org", "is not a DNS name"),
        ("matrix..example.org", "is not a DNS name"),
        ("matrix_synapse.example.org", "is not a DNS name"),
        ("matrix example.org", "is not a DNS name"),
        ("https://matrix.example.org", "has a port: give the host name only"),
        (".".join(["abcdefghi"] * 26), "is not a DNS name"),  # 259 characters
    ],
)
def test_server_name_invalid_is_refused_with_reason(given: str, reason: str) -> None:
    error = refusal(server_name=given)

    assert error.question == "server_name"
    assert error.value == given
    assert error.reason.startswith(reason)
    assert isinstance(error, UsageError)
    assert error.exit_code == 2


def test_server_name_missing_is_refused() -> None:
    error = refusal()

    assert (error.question, error.reason) == (
        "server_name",
        "is empty: a DNS name such as matrix.example.org is needed",
    )


def test_settings_error_message_is_one_line_naming_key_and_value() -> None:
    error = refusal(server_name="bad_name")

    assert str(error) == (
        "server_name: 'bad_name' is not a DNS name "
        "(letters, digits and hyphens in dot-separated labels)"
    )


@pytest.mark.parametrize("key", ["element_domain", "turn_domain"])
def test_other_domain_invalid_is_refused_under_its_own_key(key: str) -> None:
    error = refusal(server_name=NAME, **{key: "bad_name.example.org"})

    assert error.question == key
    assert error.reason.startswith("is not a DNS name")


def test_element_domain_equal_to_server_name_is_allowed_with_warning() -> None:
    settings = settings_with(element_domain="Matrix.Example.Org")

    assert settings.element_domain == NAME
    assert settings.element_on_own_domain is False
    assert settings.warnings == (
        "Element is served from the homeserver's own name matrix.example.org; Element advises "
        "a separate domain (cross-site scripting)",
    )


def test_warnings_do_not_take_part_in_equality() -> None:
    with_warning = settings_with(element_domain=NAME)

    assert with_warning == Settings(
        server_name=NAME, element_domain=NAME, turn_domain=NAME,
        proxy_addresses=("127.0.0.1/32", "::1/128"), mail_from=f"Matrix <noreply@{NAME}>",
    )


@pytest.mark.parametrize(
    ("key", "given", "expected"),
    [
        ("turn_listening_ip", "192.0.2.1", "192.0.2.1"),
        ("turn_listening_ip", " 2001:DB8::1 ", "2001:db8::1"),
        ("turn_listening_ip", "", ""),
        ("turn_external_ip", "198.51.100.7", "198.51.100.7"),
        ("turn_external_ip", "198.51.100.7/10.0.0.7", "198.51.100.7/10.0.0.7"),
        ("turn_external_ip", "2001:db8:0::7/fd00::7", "2001:db8::7/fd00::7"),
        ("turn_external_ip", "", ""),
    ],
)
def test_turn_address_valid_is_canonical(key: str, given: str, expected: str) -> None:
    assert getattr(settings_with(**{key: given}), key) == expected


@pytest.mark.parametrize(
    ("key", "given"),
    [
        ("turn_listening_ip", "192.0.2.256"),
        ("turn_listening_ip", "192.0.2"),
        ("turn_listening_ip", "matrix.example.org"),
        ("turn_listening_ip", "192.0.2.0/24"),
        ("turn_external_ip", "198.51.100.7/"),
        ("turn_external_ip", "/10.0.0.7"),
        ("turn_external_ip", "198.51.100.7/10.0.0.300"),
        ("turn_external_ip", "public/private"),
    ],
)
def test_turn_address_invalid_is_refused_with_reason(key: str, given: str) -> None:
    error = refusal(server_name=NAME, **{key: given})

    assert error.question == key
    assert error.reason == "is not an IPv4 or IPv6 address"


def test_tls_files_with_existing_absolute_paths_under_root_are_kept(tmp_path: Path) -> None:
    (tmp_path / "etc/ssl").mkdir(parents=True)
    (tmp_path / "etc/ssl/matrix.pem").write_text("certificate\n")
    (tmp_path / "etc/ssl/matrix.key").write_text("key\n")

    settings = settings_with(
        tmp_path, tls="files", tls_cert="/etc/ssl/matrix.pem", tls_key=" /etc/ssl/matrix.key "
    )

    assert (settings.tls, settings.tls_cert, settings.tls_key) == (
        TlsMode.FILES,
        "/etc/ssl/matrix.pem",
        "/etc/ssl/matrix.key",
    )


@pytest.mark.parametrize(
    ("cert", "key", "question", "reason"),
    [
        ("", "/etc/ssl/matrix.key", "tls_cert", "must be an absolute path to an existing file"),
        ("etc/ssl/matrix.pem", "/etc/ssl/matrix.key", "tls_cert",
         "must be an absolute path to an existing file"),
        ("/etc/ssl/missing.pem", "/etc/ssl/matrix.key", "tls_cert",
         "does not exist or is not a regular file"),
        ("/etc/ssl", "/etc/ssl/matrix.key", "tls_cert", "does not exist or is not a regular file"),
        ("/etc/ssl/matrix.pem", "matrix.key", "tls_key",
         "must be an absolute path to an existing file"),
        ("/etc/ssl/matrix.pem", "/etc/ssl/missing.key", "tls_key",
         "does not exist or is not a regular file"),
    ],
)
def test_tls_files_with_bad_path_is_refused_with_reason(
    tmp_path: Path, cert: str, key: str, question: str, reason: str
) -> None:
    (tmp_path / "etc/ssl").mkdir(parents=True)
    (tmp_path / "etc/ssl/matrix.pem").write_text("certificate\n")
    (tmp_path / "etc/ssl/matrix.key").write_text("key\n")

    error = refusal(tmp_path, server_name=NAME, tls="files", tls_cert=cert, tls_key=key)

    assert (error.question, error.reason) == (question, reason)


def test_tls_paths_are_not_checked_unless_tls_is_files(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, tls="self-signed", tls_cert="relative.pem")

    assert (settings.tls, settings.tls_cert) == (TlsMode.SELF_SIGNED, "relative.pem")


@pytest.mark.parametrize("email", ["admin@example.org", "first.last+matrix@mail.example.org"])
def test_acme_with_email_is_accepted(email: str) -> None:
    settings = settings_with(tls="acme", acme_email=email)

    assert (settings.tls, settings.acme_email) == (TlsMode.ACME, email)


@pytest.mark.parametrize(
    "email", ["", "admin", "admin@", "@example.org", "admin@exa mple.org", "a@b@example.org",
              "admin@example_org"]
)
def test_acme_with_bad_email_is_refused_with_reason(email: str) -> None:
    error = refusal(server_name=NAME, tls="acme", acme_email=email)

    assert (error.question, error.reason) == (
        "acme_email",
        "is not an e-mail address such as admin@example.org",
    )


def test_acme_email_is_not_checked_unless_tls_is_acme() -> None:
    assert settings_with(acme_email="not an address").acme_email == "not an address"


@pytest.mark.parametrize("tls", ["letsencrypt", "SELF-SIGNED ", "none"])
def test_tls_unknown_choice_is_refused_listing_the_choices(tls: str) -> None:
    error = refusal(server_name=NAME, tls=tls)

    assert (error.question, error.reason) == ("tls", "is not one of: self-signed, files, acme")


@pytest.mark.parametrize(
    ("given", "expected"),
    [("latest", "latest"), ("LATEST", "latest"), ("1.11.10", "1.11.10"), ("v1.2.3", "1.2.3"),
     ("1.11.90-rc.1", "1.11.90-rc.1")],
)
def test_element_version_valid_is_normalised(given: str, expected: str) -> None:
    assert settings_with(element_version=given).element_version == expected


@pytest.mark.parametrize("given", ["garbage", "1.11", "1.11.x", "v", "newest", "1.2.3.4"])
def test_element_version_invalid_is_refused_with_reason(given: str) -> None:
    error = refusal(server_name=NAME, element_version=given)

    assert (error.question, error.reason) == (
        "element_version",
        "must be 'latest' or a version such as 1.11.90",
    )


@pytest.mark.parametrize(
    "source",
    [
        "https://mirror.example.org/element/element-v{version}.tar.gz",
        "http://10.0.0.1:8080/element-v{version}.tar.gz",
        "file:///srv/element/element-v{version}.tar.gz",
    ],
)
def test_element_source_with_allowed_scheme_is_kept(source: str) -> None:
    assert settings_with(element_source=source).element_source == source


@pytest.mark.parametrize(
    "source",
    [
        "ftp://mirror.example.org/element-v{version}.tar.gz",
        "file://srv/element.tar.gz",
        "/srv/element/element-v{version}.tar.gz",
        "https://",
        "https:///element.tar.gz",
        "https://mirror.example.org/element v{version}.tar.gz",
    ],
)
def test_element_source_with_other_scheme_is_refused_with_reason(source: str) -> None:
    error = refusal(server_name=NAME, element_source=source)

    assert (error.question, error.reason) == (
        "element_source",
        "must be an https://, http:// or file:/// URL",
    )


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("example.com, matrix.example.net:8448", ("example.com", "matrix.example.net:8448")),
        ("example.com matrix.example.net:8448", ("example.com", "matrix.example.net:8448")),
        ("example.com,,  example.net ,", ("example.com", "example.net")),
        ("Example.com example.com example.com.", ("example.com",)),
        ("example.com:08448", ("example.com:8448",)),
        ("192.0.2.7:8448", ("192.0.2.7:8448",)),
        (["example.com", " example.net ", ""], ("example.com", "example.net")),
        ("", ()),
        (None, ()),
    ],
)
def test_federation_domains_are_split_normalised_and_deduplicated(
    given: Any, expected: tuple[str, ...]
) -> None:
    assert settings_with(federation_domains=given).federation_domains == expected


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        ("example.com bad_name.org", "is not a DNS name"),
        ("example.com:0", "has an invalid port (1-65535)"),
        ("example.com:65536", "has an invalid port (1-65535)"),
        ("example.com:https", "has an invalid port (1-65535)"),
        ("example.com:", "has an invalid port (1-65535)"),
    ],
)
def test_federation_domains_invalid_is_refused_with_reason(given: str, reason: str) -> None:
    error = refusal(server_name=NAME, federation_domains=given)

    assert error.question == "federation_domains"
    assert error.reason.startswith(reason)


@pytest.mark.parametrize(
    ("key", "given", "expected"),
    [
        ("federation", "open", FederationMode.OPEN),
        ("federation", "off", FederationMode.OFF),
        ("federation", False, FederationMode.OFF),  # an unquoted "off" in YAML 1.1
        ("registration", "token", RegistrationMode.TOKEN),
        ("registration", " open ", RegistrationMode.OPEN),
    ],
)
def test_choice_valid_is_the_enum_member(key: str, given: Any, expected: object) -> None:
    assert getattr(settings_with(**{key: given}), key) is expected


@pytest.mark.parametrize(
    ("key", "given", "reason"),
    [
        ("federation", "closed", "is not one of: allow-list, open, off"),
        ("federation", True, "is not one of: allow-list, open, off"),
        ("registration", "invite", "is not one of: disabled, token, open"),
        ("database", "mysql", "is not one of: sqlite, postgresql"),
    ],
)
def test_choice_invalid_is_refused_listing_the_choices(key: str, given: Any, reason: str) -> None:
    error = refusal(server_name=NAME, **{key: given})

    assert (error.question, error.reason) == (key, reason)


def test_database_postgresql_is_accepted() -> None:
    assert settings_with(database="postgresql").database is DatabaseMode.POSTGRESQL


@pytest.mark.parametrize(
    ("given", "expected"),
    [(True, True), (False, False), ("true", True), ("false", False), ("yes", True),
     ("no", False), (" TRUE ", True)],
)
def test_booleans_accept_yaml_and_debconf_spellings(given: Any, expected: bool) -> None:
    settings = settings_with(turn_enable=given, behind_proxy=given)

    assert (settings.turn_enable, settings.behind_proxy) == (expected, expected)


@pytest.mark.parametrize("key", ["turn_enable", "behind_proxy"])
def test_boolean_invalid_is_refused_with_reason(key: str) -> None:
    error = refusal(server_name=NAME, **{key: "maybe"})

    assert (error.question, error.reason) == (key, "must be true or false")


def test_proxy_addresses_are_canonical_networks() -> None:
    settings = settings_with(proxy_addresses=["192.0.2.10", "2001:DB8::/32", "10.1.2.3/8"])

    assert settings.proxy_addresses == ("192.0.2.10/32", "2001:db8::/32", "10.0.0.0/8")


def test_proxy_address_invalid_is_refused_with_reason() -> None:
    error = refusal(server_name=NAME, proxy_addresses="192.0.2.10 proxy.example.org")

    assert (error.question, error.value, error.reason) == (
        "proxy_addresses",
        "proxy.example.org",
        "is not an IP address or network",
    )


@pytest.mark.parametrize("key", ["server-name", "warnings", "admin_password", "tls_mode"])
def test_unknown_key_is_refused(key: str) -> None:
    error = refusal(server_name=NAME, **{key: "x"})

    assert (error.question, error.value) == (key, "x")
    assert error.reason == "is not a matrix-stack setting"


def test_certificate_names_are_server_element_turn_without_repeats() -> None:
    assert settings_with().certificate_names == (NAME, "element.matrix.example.org")
    assert settings_with(element_domain=NAME, turn_domain="turn.example.org").certificate_names == (
        NAME,
        "turn.example.org",
    )
    assert settings_with(
        element_domain="chat.example.org", turn_domain="turn.example.org"
    ).certificate_names == (NAME, "chat.example.org", "turn.example.org")
    assert settings_with(element_domain=NAME).certificate_names == (NAME,)


def test_remote_database_settings_are_checked() -> None:
    remote = from_mapping({"server_name": "example.org", "database": "postgresql",
                           "database_host": "DB.Example.org", "database_port": "5433"})
    assert (remote.database_host, remote.database_port, remote.remote_database) == (
        "db.example.org", 5433, True)
    assert not from_mapping({"server_name": "example.org", "database": "postgresql"}
                            ).remote_database
    assert not from_mapping({"server_name": "example.org", "database_host": "db.example.org"}
                            ).remote_database  # sqlite: the host is kept, unused
    for key, value in [("database_host", "db example"), ("database_port", 0),
                       ("database_port", "65536"), ("database_name", "x;drop"),
                       ("database_user", "1abc"), ("database_user", "a" * 64)]:
        with pytest.raises(SettingsError, match=key):
            from_mapping({"server_name": "example.org", key: value})


# --- mail -----------------------------------------------------------------------------------


def test_from_mapping_with_relay_tls_defaults_to_port_465_and_the_server_sender() -> None:
    settings = settings_with(mail="relay", mail_relay_host="SMTP.Example.org.",
                             mail_relay_security="tls")

    assert (settings.mail, settings.mail_relay_host, settings.mail_relay_port,
            settings.mail_from) == (MailMode.RELAY, "smtp.example.org", 465,
                                    f"Matrix <noreply@{NAME}>")
    assert settings.mail_on and settings.password_reset_on


def test_from_mapping_with_mail_off_turns_password_reset_off() -> None:
    settings = settings_with(mail_password_reset=True)

    assert not settings.mail_on and not settings.password_reset_on


def test_from_mapping_with_local_mail_ignores_an_invalid_unused_relay_host() -> None:
    assert settings_with(mail="local", mail_relay_host="not a host").mail_relay_host == (
        "not a host"
    )


@pytest.mark.parametrize(
    ("values", "key", "reason"),
    [({"mail": "relay"}, "mail_relay_host", "is empty"),
     ({"mail": "relay", "mail_relay_host": "smtp example"}, "mail_relay_host", "not a DNS name"),
     ({"mail_relay_port": 0}, "mail_relay_port", "port number"),
     ({"mail_relay_port": "smtp"}, "mail_relay_port", "port number"),
     ({"mail_relay_security": "ssl"}, "mail_relay_security", "is not one of: starttls, tls"),
     ({"mail": "sendmail"}, "mail", "is not one of: off, local, relay"),
     ({"mail_from": "Matrix <noreply>"}, "mail_from", "is not a sender"),
     ({"mail_from": "a@example.org\nBcc: x@example.org"}, "mail_from", "is not a sender"),
     ({"mail_relay_user": "two words"}, "mail_relay_user", "must not contain blanks"),
     ({"admin_email": "admin"}, "admin_email", "is not an e-mail address")],
)
def test_from_mapping_refuses_bad_mail_settings_naming_the_key(
    values: dict[str, Any], key: str, reason: str
) -> None:
    error = refusal(server_name=NAME, **values)

    assert error.question == key
    assert reason in error.reason
