"""Apply the catalog's principals to a broker: SCRAM users and their ACLs (cocoon.core.acls).

Run as the admin principal. `ensure_users` creates or updates SCRAM-SHA-512 credentials (the
dev broker's and `cocoon up`'s users; in Kubernetes, Strimzi's User Operator does it from the
KafkaUser resources). `apply_acls` adds every ACL the catalog gives; creating an ACL that exists
is a no-op in Kafka, so it is idempotent. `delete_principal` removes a user and every ACL it
holds (a worker whose trust was withdrawn). `remove_stale_acls` deletes what a catalog
principal holds beyond the catalog's grants (`cocoon topics apply`). Uses kafka-python's admin
client (blocking).
"""

from __future__ import annotations

import functools
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ParamSpec, TypeVar

from kafka.admin import (
    ACL,
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    KafkaAdminClient,
    ResourcePattern,
    ResourcePatternFilter,
    ResourceType,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)
from kafka.errors import KafkaError, NoError, SecurityDisabledError

from cocoon.core.acls import Acl, principal_acls, principal_name
from cocoon.core.bus.security import KafkaSecurity, kafka_python_security
from cocoon.core.catalog import default_catalog

_RESOURCE = {
    "topic": ResourceType.TOPIC,
    "group": ResourceType.GROUP,
    "transactionalId": ResourceType.TRANSACTIONAL_ID,
    "cluster": ResourceType.CLUSTER,
}
_PATTERN = {"literal": ACLResourcePatternType.LITERAL, "prefix": ACLResourcePatternType.PREFIXED}
_OPERATION = {
    "Read": ACLOperation.READ,
    "Write": ACLOperation.WRITE,
    "Create": ACLOperation.CREATE,
    "Describe": ACLOperation.DESCRIBE,
    "DescribeConfigs": ACLOperation.DESCRIBE_CONFIGS,
    "AlterConfigs": ACLOperation.ALTER_CONFIGS,
    "Alter": ACLOperation.ALTER,
    "IdempotentWrite": ACLOperation.IDEMPOTENT_WRITE,
}
# Kafka's answer (RESOURCE_NOT_FOUND) when a user to delete has no SCRAM credential.
_NO_SUCH_USER = "does not exist"


P = ParamSpec("P")
R = TypeVar("R")


class PrincipalError(RuntimeError):
    """The broker refused a user or an ACL, or could not be asked; the message says why."""


def _broker_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Kafka's errors (a refusal, no broker) as PrincipalError, for callers that do not import
    kafka-python; SecurityDisabledError stays itself (no authorizer is not a failure)."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except SecurityDisabledError:
            raise
        except KafkaError as exc:
            raise PrincipalError(f"{func.__name__}: {type(exc).__name__}: {exc}") from exc

    return wrapper


def _admin(bootstrap: str, security: KafkaSecurity | None) -> KafkaAdminClient:
    kwargs = security.kafka_python() if security is not None else kafka_python_security()
    return KafkaAdminClient(bootstrap_servers=bootstrap, client_id="cocoon-principals", **kwargs)


def kafka_acls(principal: str, acls: list[Acl]) -> list[ACL]:
    """kafka-python ACL bindings (one per operation) allowing `principal` what `acls` say."""
    return [
        ACL(
            principal=f"User:{principal}",
            host="*",
            operation=_OPERATION[operation],
            permission_type=ACLPermissionType.ALLOW,
            resource_pattern=ResourcePattern(
                _RESOURCE[acl.resource_type], acl.name, _PATTERN[acl.pattern]
            ),
        )
        for acl in acls
        for operation in acl.operations
    ]


@_broker_errors
def apply_acls(
    bootstrap: str, principals: Mapping[str, list[Acl]], *, security: KafkaSecurity | None = None
) -> int:
    """Add every ACL of `principals` (as `security`, default: this process's settings);
    returns how many bindings the broker holds for them."""
    bindings = [b for name, acls in principals.items() for b in kafka_acls(name, acls)]
    admin = _admin(bootstrap, security)
    try:
        result = admin.create_acls(bindings)
    finally:
        admin.close()
    failed = result["failed"]  # error classes, one per refused binding
    if failed and all(error is SecurityDisabledError for error in failed):
        raise SecurityDisabledError("the broker has no authorizer")
    if failed:
        shown = ", ".join(sorted({error.__name__ for error in failed}))
        raise PrincipalError(f"{len(failed)} ACL(s) refused: {shown}")
    return len(result["succeeded"])


@_broker_errors
def ensure_users(
    bootstrap: str, passwords: Mapping[str, str], *, security: KafkaSecurity | None = None
) -> None:
    """Create or update the SCRAM-SHA-512 credential of each principal."""
    upserts = [
        UserScramCredentialUpsertion(name, ScramMechanism.SCRAM_SHA_512, password)
        for name, password in passwords.items()
    ]
    admin = _admin(bootstrap, security)
    try:
        errors = admin.alter_user_scram_credentials(upserts)
    finally:
        admin.close()
    failed = {user: error for user, error in errors.items() if error}
    if failed:
        raise PrincipalError(f"SCRAM users refused: {failed}")


def _held_by(principal: str) -> ACLFilter:
    """Every ACL binding of `principal`, whatever its resource or operation."""
    return ACLFilter(
        principal=f"User:{principal}",
        host="*",
        operation=ACLOperation.ANY,
        permission_type=ACLPermissionType.ANY,
        resource_pattern=ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY),
    )


@_broker_errors
def delete_principal(
    bootstrap: str, principal: str, *, security: KafkaSecurity | None = None
) -> int:
    """Delete `principal`'s ACLs, then its SCRAM credential (gone already is fine); returns how
    many ACL bindings were deleted. ACLs first: the broker checks them on every request, so the
    principal's open connections are refused from the next fetch or produce on, while a deleted
    password stops only new connections."""
    admin = _admin(bootstrap, security)
    try:
        ((_, deleted, error),) = admin.delete_acls([_held_by(principal)])
        if error is not NoError:
            raise PrincipalError(f"deleting the ACLs of {principal}: {error}")
        errors = admin.alter_user_scram_credentials(
            [UserScramCredentialDeletion(principal, ScramMechanism.SCRAM_SHA_512)]
        )
    finally:
        admin.close()
    failed = errors.get(principal)
    if failed and _NO_SUCH_USER not in str(failed):
        raise PrincipalError(f"deleting SCRAM user {principal}: {failed}")
    return len(deleted)


def _binding(acl: ACL) -> tuple[object, ...]:
    pattern = acl.resource_pattern
    return (
        acl.principal,
        acl.host,
        acl.operation,
        acl.permission_type,
        pattern.resource_type,
        pattern.resource_name,
        pattern.pattern_type,
    )


def _owned(acl: ACL, prefix: str, namespaces: set[str]) -> bool:
    """Whether an applier for topic prefix `prefix` answers for this binding: every group,
    transactional-id and cluster binding (the catalog grants them whatever the prefix), and
    topic bindings on `prefix` + a catalog namespace (`billing.`, `work.`, ...), so applying
    one environment never touches another prefix's topics."""
    pattern = acl.resource_pattern
    if pattern.resource_type != ResourceType.TOPIC:
        return True
    name = pattern.resource_name
    return name.startswith(prefix) and name[len(prefix) :].split(".", 1)[0] in namespaces


def remove_stale_acls(
    bootstrap: str,
    principals: Mapping[str, list[Acl]],
    *,
    prefix: str = "",
    namespaces: set[str],
    security: KafkaSecurity | None = None,
) -> list[ACL]:
    """Delete the bindings each of `principals` holds on this environment's resources beyond
    what `principals` gives it (a topic, group or operation the catalog no longer grants);
    returns them. Other principals (workers' issued users) are not looked at."""
    admin = _admin(bootstrap, security)
    stale: list[ACL] = []
    try:
        for name, acls in principals.items():
            wanted = {_binding(b) for b in kafka_acls(name, acls)}
            held, error = admin.describe_acls(_held_by(name))
            if error is not NoError:
                raise PrincipalError(f"describing the ACLs of {name}: {error}")
            stale += [
                b for b in held if _owned(b, prefix, namespaces) and _binding(b) not in wanted
            ]
        if stale:
            results = admin.delete_acls([_exactly(b) for b in stale])
            failed = [str(error) for _, _, error in results if error is not NoError]
            if failed:
                raise PrincipalError(f"deleting stale ACLs: {', '.join(sorted(set(failed)))}")
    finally:
        admin.close()
    return stale


def _exactly(acl: ACL) -> ACLFilter:
    pattern = acl.resource_pattern
    return ACLFilter(
        principal=acl.principal,
        host=acl.host,
        operation=acl.operation,
        permission_type=acl.permission_type,
        resource_pattern=ResourcePatternFilter(
            pattern.resource_type, pattern.resource_name, pattern.pattern_type
        ),
    )


def password_file(directory: Path, principal: str) -> Path:
    """`<directory>/<principal>.password`, created with a random password the first time."""
    path = directory / f"{principal}.password"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(24))
    return path


def provision(
    bootstrap: str, *, prefix: str = "", users_dir: Path | None = None
) -> dict[str, Path]:
    """Apply the catalog's ACLs for topics under `prefix`; with `users_dir`, also create each
    principal's SCRAM user with the password kept there. Returns principal -> password file
    (empty without `users_dir`)."""
    principals = principal_acls(prefix=prefix)
    files: dict[str, Path] = {}
    if users_dir is not None:
        files = {name: password_file(users_dir, name) for name in principals}
        ensure_users(bootstrap, {name: path.read_text().strip() for name, path in files.items()})
    apply_acls(bootstrap, principals)
    return files


def prune(bootstrap: str, *, prefix: str = "") -> list[ACL]:
    """Remove what the catalog's principals hold beyond the catalog under `prefix`."""
    namespaces = {spec.name.split(".", 1)[0] for spec in default_catalog().values()}
    return remove_stale_acls(
        bootstrap, principal_acls(prefix=prefix), prefix=prefix, namespaces=namespaces
    )


@dataclass
class Credentials:
    """Each started process's own principal, for a launcher that runs as the admin (`cocoon
    up`, the tests): users are created with passwords kept in `users_dir`, the catalog's ACLs
    applied once per topic prefix."""

    bootstrap: str
    cafile: Path
    users_dir: Path
    _provisioned: set[str] = field(default_factory=set)

    @classmethod
    def for_admin(cls, bootstrap: str, users_dir: Path) -> Credentials | None:
        """With this process's settings (the admin's); None when the broker takes no SASL
        (plaintext or mTLS: then started processes inherit this process's settings)."""
        admin = KafkaSecurity.from_env()
        if admin.protocol != "SASL_SSL" or admin.cafile is None:
            return None
        return cls(bootstrap, admin.cafile, users_dir)

    def env(self, holder: str, prefix: str = "") -> dict[str, str]:
        """COCOON_KAFKA_* settings of `holder`'s principal (a service, or `worker-enrolment`)."""
        if prefix not in self._provisioned:
            provision(self.bootstrap, prefix=prefix, users_dir=self.users_dir)
            self._provisioned.add(prefix)
        name = principal_name(holder)
        file = password_file(self.users_dir, name)
        security = KafkaSecurity(
            "SASL_SSL", self.cafile, username=name, password=file.read_text().strip()
        )
        return security.env(password_file=file)
