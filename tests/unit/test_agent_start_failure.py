"""A command that fails to start (its request cannot even be encoded) leaves no future
whose exception nobody reads, and no agent connection open (issue #13 item 14: "Future
exception was never retrieved" in the server log). A real local socket plays the agent."""

from __future__ import annotations

import asyncio
import gc

import pytest

from sandport.runtime.agent.channel import CommandListener, CommandSpec, start_command


def test_a_start_that_fails_leaves_no_unretrieved_future() -> None:
    logged: list[str] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: logged.append(context["message"]))
        closed = asyncio.Event()

        async def agent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.read()  # until the server hangs up (a reset: SO_LINGER 0)
            except ConnectionError:
                pass
            closed.set()
            writer.close()

        server = await asyncio.start_server(agent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        spec = CommandSpec(argv=["\ud800"], env=[], cwd="/")  # not encodable as UTF-8
        with pytest.raises(UnicodeEncodeError):
            await start_command("127.0.0.1", spec, CommandListener(), port=port)
        await asyncio.wait_for(closed.wait(), 5)  # the channel hung up at once
        await asyncio.sleep(0.05)
        gc.collect()
        await asyncio.sleep(0)
        server.close()

    asyncio.run(scenario())
    gc.collect()
    assert not [m for m in logged if "never retrieved" in m], logged
