"""A connection to Mosquitto's Dynamic Security control topic (request/response)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any

import aiomqtt
import orjson

from sensorium.broker.dynsec import CONTROL_TOPIC, RESPONSE_TOPIC, Command

# Errors that mean "already in the wanted state" when repairing or re-applying commands.
BENIGN_ERRORS = {
    "createRole": "Role already exists",
    "createClient": "Client already exists",
    "deleteClient": "Client not found",
    "deleteRole": "Role not found",
}


class DynsecError(RuntimeError):
    def __init__(self, command: str, error: str) -> None:
        super().__init__(f"{command}: {error}")
        self.command = command
        self.error = error


class DynsecAdmin:
    """Sends dynsec commands and waits for their responses (matched by correlation data)."""

    def __init__(
        self, host: str, port: int, *, username: str, password: str, timeout_s: float = 5.0
    ) -> None:
        self._client = aiomqtt.Client(
            host,
            port,
            username=username,
            password=password,
            protocol=aiomqtt.ProtocolVersion.V5,
            timeout=timeout_s,
        )
        self._timeout_s = timeout_s
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> DynsecAdmin:
        await self._client.__aenter__()
        await self._client.subscribe(RESPONSE_TOPIC, qos=1)
        self._reader = asyncio.create_task(self._read(), name="dynsec-responses")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._reader
        for future in self._pending.values():
            future.cancel()
        with contextlib.suppress(aiomqtt.MqttError):
            await self._client.__aexit__(exc_type, exc, tb)

    async def _read(self) -> None:
        try:
            async for message in self._client.messages:
                if not isinstance(message.payload, bytes | bytearray):
                    continue
                for response in orjson.loads(message.payload).get("responses", []):
                    future = self._pending.pop(str(response.get("correlationData")), None)
                    if future is not None and not future.done():
                        future.set_result(response)
        except aiomqtt.MqttError as exc:
            # The broker went away: waiting commands fail now, not at their (long) timeout.
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(exc)
            self._pending.clear()
            raise

    async def execute(
        self, commands: Sequence[Command], *, tolerate: bool = True, timeout_s: float | None = None
    ) -> list[dict[str, Any]]:
        """Run commands in order; raise DynsecError on the first real failure.

        With `tolerate`, "already exists"/"not found" answers count as success, so a
        command list can be re-applied safely (the outbox and `broker sync` rely on it).
        """
        responses = await self.run(commands, timeout_s=timeout_s)
        for response in responses:
            failure = self.failure(response, tolerate=tolerate)
            if failure is not None:
                raise failure
        return responses

    @staticmethod
    def failure(response: dict[str, Any], *, tolerate: bool = True) -> DynsecError | None:
        error = response.get("error")
        if error and not (tolerate and BENIGN_ERRORS.get(response["command"]) == error):
            return DynsecError(response["command"], error)
        return None

    async def run(
        self, commands: Sequence[Command], *, timeout_s: float | None = None
    ) -> list[dict[str, Any]]:
        """Send commands in one control message; their responses, in order, errors included.
        (Mosquitto 2.0 saves its dynsec file after each change command, and answers the
        whole message at once: `timeout_s` must allow for that; see `service.Pacing`.)
        """
        loop = asyncio.get_running_loop()
        if self._reader is not None and self._reader.done():
            raise aiomqtt.MqttError("the connection to the broker was lost")
        futures = []
        batch = []
        for command in commands:
            key = str(next(self._ids))
            future: asyncio.Future[dict[str, Any]] = loop.create_future()
            self._pending[key] = future
            futures.append(future)
            batch.append({**command, "correlationData": key})
        await self._client.publish(CONTROL_TOPIC, orjson.dumps({"commands": batch}), qos=1)
        try:
            # asyncio.timeout, not wait_for: on Python 3.11, wait_for drops a cancellation
            # that lands as the answers arrive, and the caller (the provisioner being
            # stopped) would go on as if it had not been cancelled.
            async with asyncio.timeout(timeout_s or self._timeout_s):
                return list(await asyncio.gather(*futures))
        finally:
            for key in {str(c["correlationData"]) for c in batch}:
                self._pending.pop(key, None)

    async def list_clients(self) -> list[str]:
        [response] = await self.execute([{"command": "listClients", "verbose": False, "count": -1}])
        return list(response.get("data", {}).get("clients", []))

    async def get_client(self, username: str) -> dict[str, Any] | None:
        try:
            [response] = await self.execute(
                [{"command": "getClient", "username": username}], tolerate=False
            )
        except DynsecError as exc:
            if exc.error == "Client not found":
                return None
            raise
        client = response.get("data", {}).get("client")
        return client if isinstance(client, dict) else None

    async def sync_role(self, rolename: str, acls: Sequence[dict[str, Any]]) -> bool:
        """Create the role or bring its ACLs to exactly `acls`; True when anything changed."""
        try:
            [response] = await self.execute(
                [{"command": "getRole", "rolename": rolename}], tolerate=False
            )
        except DynsecError as exc:
            if exc.error != "Role not found":
                raise
            await self.execute(
                [{"command": "createRole", "rolename": rolename, "acls": list(acls)}]
            )
            return True

        def key(acl: dict[str, Any]) -> tuple[str, str, bool]:
            return acl["acltype"], acl["topic"], bool(acl.get("allow", False))

        current = {key(a): a for a in response.get("data", {}).get("role", {}).get("acls", [])}
        wanted = {key(a): a for a in acls}
        commands: list[Command] = [
            {"command": "removeRoleACL", "rolename": rolename, "acltype": t, "topic": topic}
            for (t, topic, _allow) in current.keys() - wanted.keys()
        ] + [
            {"command": "addRoleACL", "rolename": rolename, **wanted[k]}
            for k in wanted.keys() - current.keys()
        ]
        if commands:
            await self.execute(commands)
        return bool(commands)


@contextlib.asynccontextmanager
async def connect(
    host: str, port: int, *, username: str, password: str, timeout_s: float = 5.0
) -> AsyncIterator[DynsecAdmin]:
    async with DynsecAdmin(
        host, port, username=username, password=password, timeout_s=timeout_s
    ) as admin:
        yield admin
