"""Mosquitto Dynamic Security: the commands and ACLs Sensorium provisions, and the file format.

One dynsec client and one role per device: username = client id = device id, password =
its token; the role lets it publish only to its own uplink topics and subscribe only to
its own downlink topics. Service accounts get exactly what the worker and API need.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

from sensorium.protocol import downlink_topics, uplink_subscriptions

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
ADMIN_ROLE = "sensorium-admin"
SERVICE_ROLE = "sensorium-service"
DEVICE_ROLE_PREFIX = "device-"
# Workers split the uplink through this shared-subscription group.
SHARE_GROUP = "sensorium"
# Mosquitto's own choice (mosquitto_ctrl dynsec init): PBKDF2-SHA512, 101 iterations.
PBKDF2_ITERATIONS = 101

Command = dict[str, Any]


def device_role(device_id: str) -> str:
    return DEVICE_ROLE_PREFIX + device_id


def _acl(acltype: str, topic: str, *, allow: bool = True) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "priority": 0, "allow": allow}


def device_acls(device_id: str) -> list[dict[str, Any]]:
    uplink = [_acl("publishClientSend", t) for t in uplink_subscriptions(device_id)]
    downlink = [_acl("subscribeLiteral", t) for t in downlink_topics(device_id)]
    return uplink + downlink


def service_acls() -> list[dict[str, Any]]:
    """The worker reads every uplink (shared subscription) and the API writes downlinks."""
    # subscribeLiteral: the worker subscribes to exactly these filters. Mosquitto 2.0
    # checks a shared subscription with its $share/group/ prefix, so that form is listed.
    filters = uplink_subscriptions("+")
    subscribe = [_acl("subscribeLiteral", f"$share/{SHARE_GROUP}/{t}") for t in filters]
    subscribe += [_acl("subscribeLiteral", t) for t in filters]  # a lone worker (serve)
    publish = [_acl("publishClientSend", t) for t in downlink_topics("+")]
    return subscribe + publish


def admin_acls() -> list[dict[str, Any]]:
    return [
        _acl("publishClientSend", CONTROL_TOPIC + "/#"),
        _acl("publishClientReceive", CONTROL_TOPIC + "/#"),
        _acl("subscribePattern", CONTROL_TOPIC + "/#"),
    ]


def create_device_commands(device_id: str, token: str) -> list[Command]:
    """Create (or, with `update_device_commands`, repair) a device's role and client."""
    return [
        {
            "command": "createRole",
            "rolename": device_role(device_id),
            "acls": device_acls(device_id),
        },
        {
            "command": "createClient",
            "username": device_id,
            "clientid": device_id,
            "password": token,
            "roles": [{"rolename": device_role(device_id), "priority": 0}],
        },
    ]


def set_password_commands(device_id: str, token: str) -> list[Command]:
    # Mosquitto disconnects the device when its password changes: it reconnects with
    # the new token. (A rotation grace period therefore only applies to HTTP.)
    return [
        {"command": "setClientPassword", "username": device_id, "password": token},
        {"command": "enableClient", "username": device_id},
    ]


def disable_device_commands(device_id: str) -> list[Command]:
    """Revocation: the client stays (so its role survives) but cannot connect; kicked now."""
    return [{"command": "disableClient", "username": device_id}]


def delete_device_commands(device_id: str) -> list[Command]:
    return [
        {"command": "deleteClient", "username": device_id},
        {"command": "deleteRole", "rolename": device_role(device_id)},
    ]


def _hash_client(username: str, password: str) -> dict[str, Any]:
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    return {
        "username": username,
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": PBKDF2_ITERATIONS,
    }


def initial_config(
    *, admin_username: str, admin_password: str, service_username: str, service_password: str
) -> dict[str, Any]:
    """A dynsec file with the admin and service accounts, denying everything else by default.

    The same content `mosquitto_ctrl dynsec init` writes, plus the service account, so no
    extra tool is needed to bootstrap a broker.
    """
    return {
        "defaultACLAccess": {
            "publishClientSend": False,
            # Receiving is still limited by what a client may subscribe to.
            "publishClientReceive": True,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": [
            {**_hash_client(admin_username, admin_password), "roles": [{"rolename": ADMIN_ROLE}]},
            {
                **_hash_client(service_username, service_password),
                "roles": [{"rolename": SERVICE_ROLE}],
            },
        ],
        "groups": [],
        "roles": [
            {"rolename": ADMIN_ROLE, "acls": admin_acls()},
            {"rolename": SERVICE_ROLE, "acls": service_acls()},
        ],
    }


class DynsecFile:
    """The dynsec file edited directly, while Mosquitto is stopped: the same end states as
    the commands above, for any number of devices in one pass.

    Mosquitto 2.0 rewrites its whole dynsec file after every change command, so provisioning
    through the control topic costs O(accounts) per command and O(n²) for a fleet (measured:
    3 ms a command at 100 devices, 23 ms at 1,000; 10,000 devices would take about an hour,
    with the broker serving nobody during each save). A supervised broker can instead be
    stopped, its file edited here, and started again.
    """

    def __init__(self, path: Path, document: dict[str, Any]) -> None:
        self.path = path
        self.document = document
        self._clients: dict[str, dict[str, Any]] = {
            c["username"]: c for c in document.setdefault("clients", [])
        }
        self._roles: dict[str, dict[str, Any]] = {
            r["rolename"]: r for r in document.setdefault("roles", [])
        }

    @classmethod
    def load(cls, path: Path) -> DynsecFile:
        return cls(path, json.loads(path.read_text()))

    def upsert_device(self, device_id: str, token: str) -> None:
        """createRole + createClient + setClientPassword + enableClient: the device's role
        with exactly its ACLs, its client with this token, enabled."""
        role = device_role(device_id)
        self._roles[role] = {**self._roles.get(role, {}), "rolename": role}
        self._roles[role]["acls"] = device_acls(device_id)
        client = self._clients.setdefault(device_id, {"username": device_id})
        client.pop("disabled", None)
        # Exactly its own role, in no group: a left-over client keeps no other grants.
        self._leave_groups(device_id)
        client.update(
            _hash_client(device_id, token),
            clientid=device_id,
            roles=[{"rolename": role, "priority": 0}],
        )

    def disable_device(self, device_id: str) -> bool:
        """disableClient; False when there is no such client (nothing can log in as it)."""
        client = self._clients.get(device_id)
        if client is None:
            return False
        client["disabled"] = True
        return True

    def delete_device(self, device_id: str) -> None:
        """deleteClient + deleteRole."""
        self._clients.pop(device_id, None)
        self._roles.pop(device_role(device_id), None)
        self._leave_groups(device_id)

    def _leave_groups(self, username: str) -> None:
        # Mosquitto keeps group membership on the group ("clients"), not on the client.
        for group in self.document.get("groups") or []:
            members = group.get("clients") or []
            group["clients"] = [m for m in members if m.get("username") != username]

    def save(self) -> None:
        """Atomically, readable only by the owner (the file holds password hashes)."""
        self.document["clients"] = sorted(self._clients.values(), key=lambda c: c["username"])
        self.document["roles"] = sorted(self._roles.values(), key=lambda r: r["rolename"])
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(self.document, out, indent=1)
        os.replace(tmp, self.path)
