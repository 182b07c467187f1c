"""``sandport serve``: one process, one asyncio loop, composing every server-side part."""
