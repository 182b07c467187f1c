"""The web console: every sandbox's page at its ``sessionUrl``.

Server-rendered pages (Jinja2, autoescaped) with a little JavaScript for the live parts;
served by ``sandport serve`` itself under ``/console``, signed in with an API key kept in an
HttpOnly session cookie, never in a URL or a page.
"""
