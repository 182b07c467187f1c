""".dockerignore matching: docker's documented examples, ``**``, exceptions, classes, pruning."""

from __future__ import annotations

import pytest

from sandport.dockerignore import clean, parse_dockerignore
from sandport.errors import ValidationFailed

DOCS_EXAMPLE = "# comment\n*/temp*\n*/*/temp*\ntemp?\n"


@pytest.mark.parametrize(("patterns", "path", "excluded"), [
    # The reference's first example.
    (DOCS_EXAMPLE, "somedir/temporary.txt", True),
    (DOCS_EXAMPLE, "somedir/temp", True),
    (DOCS_EXAMPLE, "somedir/temp/file", True),  # below an excluded directory
    (DOCS_EXAMPLE, "somedir/subdir/temporary.txt", True),
    (DOCS_EXAMPLE, "tempa", True),
    (DOCS_EXAMPLE, "tempb", True),
    (DOCS_EXAMPLE, "temp", False),
    (DOCS_EXAMPLE, "tempab", False),
    (DOCS_EXAMPLE, "temporary.txt", False),
    (DOCS_EXAMPLE, "# comment", False),
    # Exceptions, last match wins.
    ("*.md\n!README.md\n", "x.md", True),
    ("*.md\n!README.md\n", "README.md", False),
    ("*.md\n!README.md\n", "docs/a.md", False),  # * does not cross "/"
    ("*.md\n!README*.md\nREADME-secret.md\n", "README-secret.md", True),
    ("*.md\n!README*.md\nREADME-secret.md\n", "README-other.md", False),
    ("*.md\nREADME-secret.md\n!README*.md\n", "README-secret.md", False),
    ("*\n!main.go\n", "main.go", False),
    ("*\n!main.go\n", "a/b/c.go", True),
    # Leading "/" and cleaning.
    ("/foo/bar\n", "foo/bar", True),
    ("foo/bar\n", "foo/bar", True),
    ("/foo/bar\n", "bar/foo/bar", False),
    ("./foo\n", "foo/baz/qux", True),
    ("foo/\n", "foo/bar", True),
    ("foo/../bar\n", "bar/foo", True),
    ("foo//bar/.\n", "foo/bar", True),
    ("  temp  \n", "temp", True),
    ("  # not a comment\n", "# not a comment", True),  # "#" only counts in column 1
    ("\ufeff# comment\ntemp\n", "temp", True),
    ("temp\r\n", "temp", True),
    # ** matches any number of directories, none included.
    ("**/*.go\n", "main.go", True),
    ("**/*.go\n", "a/b/c.go", True),
    ("**/*.go\n", "a/b/c.gox", False),
    ("**/node_modules\n", "node_modules/p/index.js", True),
    ("**/node_modules\n", "src/node_modules/q.js", True),
    ("node_modules\n", "src/node_modules/q.js", False),
    ("a/**/c.go\n", "a/c.go", True),
    ("a/**/c.go\n", "a/b/c.go", True),
    ("a/**/c.go\n", "b/a/c.go", False),
    ("a/**\n", "a/x.txt", True),
    ("a/**\n", "a", False),
    ("**\n", "anything/at/all", True),
    ("**/temp*\n", "somedir/subdir/temporary.txt", True),
    # A directory's exclusion covers its contents, and exceptions reach into it.
    ("a\n!a/keep\n", "a/keep", False),
    ("a\n!a/keep\n", "a/x.txt", True),
    ("a\n!a/keep\n", "a/b/keep.txt", True),
    ("!a/keep\na\n", "a/keep", True),  # the exception came first: it loses
    ("a/**\n!a/b/keep.txt\n", "a/b/keep.txt", False),
    (".git\nbuild\n!build/keep\n", "build/keep/me.txt", False),
    (".git\nbuild\n!build/keep\n", "build/out.o", True),
    (".git\nbuild\n!build/keep\n", ".git/objects/aa/bb", True),
    ("*\n!docs\ndocs/sub\n!docs/sub/b.md\n", "docs/a.md", False),
    ("*\n!docs\ndocs/sub\n!docs/sub/b.md\n", "docs/sub/b.md", False),
    ("*\n!docs\ndocs/sub\n!docs/sub/c.md\n", "docs/sub/b.md", True),
    # The documented rule (and BuildKit's); the legacy builder's walker skips x/ here.
    ("**\n!**/*.py\n", "x/y/z/deep.py", False),
    ("**\n!**/*.py\n", "x/y/z/deep.pyc", True),
    # Go's Match syntax: classes, negation, ranges, escapes.
    ("[a-c].[ch]\n", "a.c", True),
    ("[a-c].[ch]\n", "b.h", True),
    ("[a-c].[ch]\n", "b.x", False),
    ("[a-c].[ch]\n", "d.c", False),
    ("file[^1]\n", "file2", True),
    ("file[^1]\n", "file1", False),
    ("file[12]\n", "file1", True),
    ("file[12]\n", "filea", False),
    ("file[\\]]\n", "file]", True),
    ("file\\[1\\].txt\n", "file[1].txt", True),
    ("star\\*name\n", "star*name", True),
    ("star\\*name\n", "starXname", False),
    ("q\\?mark\n", "q?mark", True),
    ("q?mark\n", "qXmark", True),
    ("dir.with.dot\n", "dir.with.dot/f", True),
    ("dir.with.dot\n", "dirXwithXdot/f", False),  # "." is literal, not a regex dot
    ("a+b(c)|{d}$\n", "a+b(c)|{d}$", True),
])
def test_excluded(patterns: str, path: str, excluded: bool) -> None:
    assert parse_dockerignore(patterns).excluded(path) is excluded


def test_paths_are_taken_relative_however_written() -> None:
    ignore = parse_dockerignore("foo/bar\n")
    assert ignore.excluded("./foo/bar") and ignore.excluded("/foo/bar/")
    assert ignore.excluded("foo//bar/x")


def test_empty_file_excludes_nothing() -> None:
    assert not parse_dockerignore("").excluded("Dockerfile")
    assert not parse_dockerignore("# only\n\n   \n").excluded("x")


@pytest.mark.parametrize(("patterns", "directory", "descend"), [
    ("a\n", "a", False),
    ("a\n", "b", True),
    ("a\n!a/keep\n", "a", True),
    ("a\n!a/keep\n", "a/b", False),  # a/keep cannot be below a/b
    ("!a/keep\na\n", "a", False),  # an exception before the exclusion cannot win
    (".git\nbuild\n!build/keep\n", ".git", False),
    (".git\nbuild\n!build/keep\n", "build", True),
    (".git\nbuild\n!build/keep\n", "build/other", False),
    ("x\n!x/**/*.py\n", "x/y/z", True),
    ("**\n!**/*.py\n", "x", True),
    ("*\n!*.md\n", "docs", False),  # *.md has one component: nothing below docs matches
    ("*\n!*/*.md\n", "docs", True),
    ("*\n!*/*.md\n", "docs/sub", False),
    ("node_modules\n!node_modules/[^x]*/keep\n", "node_modules", True),
    ("a\n!b\n", "a", False),
])
def test_may_descend(patterns: str, directory: str, descend: bool) -> None:
    assert parse_dockerignore(patterns).may_descend(directory) is descend


def test_may_descend_never_hides_an_included_file() -> None:
    files = ["a/keep", "a/b/keep.txt", "x/y/z/deep.py", "docs/sub/b.md", "build/keep/me.txt",
             "node_modules/p/keep", "src/node_modules/q.js"]
    for patterns in ["a\n!a/keep\n", "**\n!**/*.py\n", "*\n!docs\ndocs/sub\n!docs/sub/b.md\n",
                     "build\n!build/keep\n", "**/node_modules\n!node_modules/[^x]/keep\n",
                     "*\n!*/*/*.txt\n"]:
        ignore = parse_dockerignore(patterns)
        for path in files:
            if not ignore.excluded(path):
                parents = ["/".join(path.split("/")[:i]) for i in range(1, path.count("/") + 1)]
                assert all(ignore.may_descend(p) for p in parents), (patterns, path)


@pytest.mark.parametrize(("text", "line"), [
    ("[\n", 1), ("ok\na\\\n", 2), ("[]\n", 1), ("[b-a]\n", 1), ("[-a]\n", 1), ("[a-]\n", 1),
    ("[]a]\n", 1), ("[^]\n", 1), ("x[a\n", 1), ("[\\\n", 1), ("# c\n\n!\n", 3), ("!   \n", 1),
])
def test_bad_patterns_name_the_line(text: str, line: int) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_dockerignore(text)
    assert caught.value.status == 400 and f".dockerignore line {line}:" in caught.value.message


@pytest.mark.parametrize(("path", "cleaned"), [
    ("a/b", "a/b"), ("a//b", "a/b"), ("a/./b", "a/b"), ("a/../b", "b"), ("a/b/", "a/b"),
    ("./a", "a"), ("", "."), (".", "."), ("..", ".."), ("../a", "../a"), ("a/../..", ".."),
    ("/", "/"), ("/..", "/"), ("/../a", "/a"), ("//a//b//", "/a/b"),
])
def test_clean_is_gos(path: str, cleaned: str) -> None:
    assert clean(path) == cleaned
