"""The in-sandbox agent: a small static C program (agent.c) that runs commands for us.

Starting a command through ``runc exec`` costs ~30-40 ms here (a Go binary starting, a
namespace join, a seccomp filter compiled again); the agent, already inside the sandbox,
forks one in about a millisecond. It runs as the child of the sandbox's init, so what it
starts has exactly the sandbox's namespaces, cgroup, capabilities and seccomp filter.

``protocol`` is the wire format (pure), ``client`` speaks it over asyncio, ``build``
compiles the agent once per source version.
"""
