"""Mosquitto Dynamic Security: the commands and ACLs Sensorium provisions, and the file format.

One dynsec client and one role per device: username = client id = device id, password =
its token; the role lets it publish only to its own uplink topics and subscribe only to
its own downlink topics. Service accounts get exactly what the worker and API need.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
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
