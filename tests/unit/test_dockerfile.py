"""The Dockerfile parser: every instruction form, docker's variable rules, and every refusal."""

from __future__ import annotations

import platform
from collections.abc import Mapping

import pytest

from sandport.errors import ValidationFailed
from sandport.runtime.images.dockerfile import (
    Dockerfile,
    Instruction,
    archive_kind,
    duration_ns,
    host_arch,
    parse_dockerfile,
)


def parse(text: str, build_args: dict[str, str] | None = None,
          base_env: Mapping[str, Mapping[str, str]] | None = None) -> Dockerfile:
    return parse_dockerfile(text, build_args or {}, base_env=base_env, arch="amd64")


def last(text: str, build_args: dict[str, str] | None = None) -> Instruction:
    """The last instruction of ``FROM scratch`` followed by ``text``."""
    return parse("FROM scratch\n" + text, build_args).stages[-1].instructions[-1]


@pytest.mark.parametrize(("text", "keyword", "args", "json_form", "flags"), [
    ("RUN apt-get update && apt-get install -y curl", "RUN",
     ("apt-get update && apt-get install -y curl",), False, {}),
    ('RUN ["/bin/sh", "-c", "echo $HOME"]', "RUN", ("/bin/sh", "-c", "echo $HOME"), True, {}),
    ("RUN [ -f /etc/passwd ] && echo yes", "RUN", ("[ -f /etc/passwd ] && echo yes",), False, {}),
    ("RUN [\"a\", 'b']", "RUN", ("[\"a\", 'b']",), False, {}),  # not JSON: shell, as docker
    ('RUN cat <<<"a here string"', "RUN", ('cat <<<"a here string"',), False, {}),
    ("RUN echo $(( 1 << 2 )) '<<EOF'", "RUN", ("echo $(( 1 << 2 )) '<<EOF'",), False, {}),
    ("run echo lower-case keyword", "RUN", ("echo lower-case keyword",), False, {}),
    ("CMD echo hi", "CMD", ("echo hi",), False, {}),
    ('CMD ["nginx", "-g", "daemon off;"]', "CMD", ("nginx", "-g", "daemon off;"), True, {}),
    ("CMD []", "CMD", (), True, {}),
    ("ENTRYPOINT exec top -b", "ENTRYPOINT", ("exec top -b",), False, {}),
    ('ENTRYPOINT ["top", "-b"]', "ENTRYPOINT", ("top", "-b"), True, {}),
    ('SHELL ["/bin/bash", "-o", "pipefail", "-c"]', "SHELL",
     ("/bin/bash", "-o", "pipefail", "-c"), True, {}),
    ("COPY app.py /srv/", "COPY", ("app.py", "/srv/"), False, {}),
    ("COPY a b c /dst/", "COPY", ("a", "b", "c", "/dst/"), False, {}),
    ('COPY ["my file", "/dst/my file"]', "COPY", ("my file", "/dst/my file"), True, {}),
    ('COPY "my file" /dst/', "COPY", ("my file", "/dst/"), False, {}),
    ("COPY --chown=1000:1000 --chmod=0755 run.sh /usr/local/bin/", "COPY",
     ("run.sh", "/usr/local/bin/"), False, {"chown": "1000:1000", "chmod": "0755"}),
    ("ADD --chown=app --chmod=644 site.tar.gz /srv/", "ADD", ("site.tar.gz", "/srv/"), False,
     {"chown": "app", "chmod": "644"}),
    ("ENV A=1 B=\"two words\" C='$NOT' D=x\\ y", "ENV",
     ("A=1", "B=two words", "C=$NOT", "D=x y"), False, {}),
    ("ENV LEGACY value with  spaces", "ENV", ("LEGACY=value with  spaces",), False, {}),
    ('LABEL "com.example.vendor"="ACME Inc" version=1.0 note="a \\"quote\\""', "LABEL",
     ("com.example.vendor=ACME Inc", "version=1.0", 'note=a "quote"'), False, {}),
    ("LABEL legacy the value", "LABEL", ("legacy=the value",), False, {}),
    ("MAINTAINER Jane <jane@example.com>", "LABEL",
     ("maintainer=Jane <jane@example.com>",), False, {}),
    ("EXPOSE 80 443/udp 8000-8010/tcp", "EXPOSE", ("80", "443/udp", "8000-8010/tcp"), False, {}),
    ("WORKDIR /srv/app", "WORKDIR", ("/srv/app",), False, {}),
    ('WORKDIR "/my dir"', "WORKDIR", ("/my dir",), False, {}),
    ("USER app:app", "USER", ("app:app",), False, {}),
    ("STOPSIGNAL SIGQUIT", "STOPSIGNAL", ("SIGQUIT",), False, {}),
    ("STOPSIGNAL 9", "STOPSIGNAL", ("9",), False, {}),
    ("STOPSIGNAL SIGRTMIN+3", "STOPSIGNAL", ("SIGRTMIN+3",), False, {}),
    ('VOLUME ["/data", "/logs"]', "VOLUME", ("/data", "/logs"), True, {}),
    ("VOLUME /data /logs", "VOLUME", ("/data", "/logs"), False, {}),
    ("HEALTHCHECK NONE", "HEALTHCHECK", ("NONE",), False, {}),
    ("HEALTHCHECK --interval=5m --timeout=3s --retries=2 CMD curl -f http://localhost/ || "
     "exit 1", "HEALTHCHECK", ("CMD-SHELL", "curl -f http://localhost/ || exit 1"), False,
     {"interval": "5m", "timeout": "3s", "retries": "2"}),
    ('HEALTHCHECK --start-period=1m30s --start-interval=500ms CMD ["pg_isready", "-q"]',
     "HEALTHCHECK", ("CMD", "pg_isready", "-q"), True,
     {"start-period": "1m30s", "start-interval": "500ms"}),
    ("COPY -- --odd-name /dst/", "COPY", ("--odd-name", "/dst/"), False, {}),  # end of flags
    ("ARG NAME", "ARG", ("NAME",), False, {}),
    ("ARG NAME=default OTHER", "ARG", ("NAME=default", "OTHER"), False, {}),
])
def test_instruction_forms(text: str, keyword: str, args: tuple[str, ...], json_form: bool,
                           flags: dict[str, str]) -> None:
    got = last(text)
    assert (got.line, got.keyword, got.args, got.json_form, got.flags) == (
        2, keyword, args, json_form, flags)
    assert got.original == text


def test_key_value_instructions_carry_pairs() -> None:
    assert last("ENV A=1 B=two").pairs == (("A", "1"), ("B", "two"))
    assert last("ARG X Y=2").pairs == (("X", None), ("Y", "2"))
    assert last("MAINTAINER me").pairs == (("maintainer", "me"),)


def test_add_is_local_and_unpacks_archives_copy_does_not() -> None:
    assert last("ADD rootfs.tar.xz /").extract_archives
    assert not last("COPY rootfs.tar.xz /").extract_archives


@pytest.mark.parametrize(("expression", "expected"), [
    ("$A", "a"), ("${A}", "a"), ("${A}_x", "a_x"), ("$A_x", ""), ("$A-x", "a-x"),
    ("${UNSET:-d}", "d"), ("${EMPTY:-d}", "d"), ("${EMPTY-d}", ""), ("${UNSET-d}", "d"),
    ("${A:-d}", "a"), ("${A:+alt}", "alt"), ("${UNSET:+alt}", ""), ("${EMPTY:+alt}", ""),
    ("${EMPTY+alt}", "alt"), ("${A:?needed}", "a"),
    ("\\$A", "$A"), ("\\${A}", "${A}"), ("'$A'", "$A"), ('"$A"', "a"), ('"\\$A"', "$A"),
    ("${UNSET:-${A}b}", "ab"), ('${UNSET:-"x y"}', "x y"), ("${UNSET:-$UNSET}", ""),
    ("$", "$"), ("a$", "a$"), ("$1", ""), ("$@", ""), ("${A}${A}", "aa"), ("€$A", "€a"),
])
def test_variable_substitution(expression: str, expected: str) -> None:
    got = last(f"ENV A=a EMPTY=\nWORKDIR x{expression}")
    assert got.args == (f"x{expected}",)


@pytest.mark.parametrize(("expression", "message"), [
    ("${UNSET:?set UNSET first}", "UNSET: set UNSET first"),
    ("${EMPTY:?}", "EMPTY: is not set"),
    ("${A%.txt}", "unsupported substitution"),
    ("${A:1:2}", "unsupported substitution"),
    ("${A", "missing '}'"),
    ("${A:-x", "missing '}'"),
    ("${}", "no variable name"),
    ("'open", "single quote"),
    ('"open', "double quote"),
])
def test_bad_substitutions_name_the_line(expression: str, message: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        last(f"ENV A=a EMPTY=\nWORKDIR {expression}")
    assert "line 3" in caught.value.message and message in caught.value.message


def test_shell_instructions_are_not_expanded() -> None:
    df = parse("FROM scratch\nENV A=a\nRUN echo $A\nCMD echo ${A}\nENTRYPOINT [\"$A\"]\n"
               "HEALTHCHECK CMD test $A\nSHELL [\"$A\"]\n")
    assert [i.args for i in df.stages[0].instructions[1:]] == [
        ("echo $A",), ("echo ${A}",), ("$A",), ("CMD-SHELL", "test $A"), ("$A",)]


def test_env_expansion_sees_the_values_before_the_instruction() -> None:
    # The reference's example: def gets hello, ghi gets bye.
    df = parse("FROM scratch\nENV abc=hello\nENV abc=bye def=$abc\nENV ghi=$abc\n")
    assert [i.pairs for i in df.stages[0].instructions[1:]] == [
        (("abc", "bye"), ("def", "hello")), (("ghi", "bye"),)]


@pytest.mark.parametrize("keyword", ["ADD", "COPY"])
def test_copy_and_add_expand_paths_and_flags(keyword: str) -> None:
    got = last(f'ARG UID=1000\nENV SRC=app DST=/srv\n{keyword} --chown=$UID:$UID '
               f'${{SRC}}.py ["x"] $DST/\n')
    assert got.args == ("app.py", "[x]", "/srv/") and got.flags["chown"] == "1000:1000"
    got = last(f'ENV SRC="a b"\n{keyword} ["$SRC", "it\'s", "/d/"]\n')
    assert got.args == ("a b", "it's", "/d/") and got.json_form


def test_base_env_is_used_when_given_and_unknown_otherwise() -> None:
    text = "FROM debian:12\nENV PATH=/opt/bin:$PATH\nFROM scratch\nENV PATH=/x:$PATH\n"
    bare = parse(text)
    assert [s.instructions[0].args for s in bare.stages] == [("PATH=/opt/bin:",), ("PATH=/x:",)]
    assert bare.external_images == ("debian:12",)
    env = {"debian:12": {"PATH": "/usr/bin:/bin"}, "scratch": {"PATH": "/bin"}}
    known = parse(text, base_env=env)
    assert [s.instructions[0].args for s in known.stages] == [
        ("PATH=/opt/bin:/usr/bin:/bin",), ("PATH=/x:/bin",)]


# -- ARG scoping ---------------------------------------------------------------------------

def test_global_arg_is_for_from_lines_until_declared_again() -> None:
    df = parse("ARG VERSION=latest\nFROM busybox:$VERSION\nWORKDIR /v$VERSION\n"
               "ARG VERSION\nWORKDIR /v$VERSION\n")
    stage = df.stages[0]
    assert stage.base == "busybox:latest"
    assert [i.args for i in stage.instructions] == [("/v",), ("VERSION=latest",), ("/vlatest",)]
    assert df.global_args == {"VERSION": "latest"}


@pytest.mark.parametrize(("build_args", "base", "inside"), [
    ({}, "busybox:latest", "/latest/stage-default"),
    ({"VERSION": "1.36"}, "busybox:1.36", "/1.36/stage-default"),
    ({"VERSION": "1.36", "LOCAL": "cli"}, "busybox:1.36", "/1.36/cli"),
])
def test_build_args_override_defaults(build_args: dict[str, str], base: str,
                                      inside: str) -> None:
    df = parse("ARG VERSION=latest\nARG NODEFAULT\nFROM busybox:$VERSION\nARG VERSION\n"
               "ARG LOCAL=stage-default\nWORKDIR /$VERSION/$LOCAL\n", build_args)
    assert df.stages[0].base == base
    assert df.stages[0].instructions[-1].args == (inside,)
    assert df.global_args == {"VERSION": "latest", "NODEFAULT": None}


def test_arg_is_unset_before_its_declaration_in_a_stage() -> None:
    # The reference's example: the first USER falls back, the second sees the build arg.
    df = parse("FROM busybox\nUSER ${username:-some_user}\nARG username\nUSER $username\n",
               {"username": "what_user"})
    assert [i.args for i in df.stages[0].instructions] == [
        ("some_user",), ("username=what_user",), ("what_user",)]


def test_env_wins_over_arg_whatever_the_order() -> None:
    df = parse("FROM busybox\nARG V\nENV V=v1.0.0\nWORKDIR /$V\nARG V=other\nWORKDIR /$V\n",
               {"V": "v2.0.1"})
    assert [i.args for i in df.stages[0].instructions if i.keyword == "WORKDIR"] == [
        ("/v1.0.0",), ("/v1.0.0",)]


def test_args_do_not_cross_stages_but_env_follows_the_base_stage() -> None:
    df = parse("FROM scratch AS one\nARG A=1\nENV E=e\nFROM one\nWORKDIR /$A/$E\n")
    assert df.stages[1].base_stage == 0
    assert df.stages[1].instructions[0].args == ("//e",)


def test_run_gets_the_args_in_scope_and_proxy_build_args() -> None:
    df = parse("ARG G=g\nFROM scratch\nARG A=1\nARG B\nARG G\nRUN make\n",
               {"HTTP_PROXY": "http://proxy:3128", "A": "2"})
    assert df.stages[0].instructions[-1].build_env == {
        "A": "2", "G": "g", "HTTP_PROXY": "http://proxy:3128"}


def test_unused_build_args_are_listed_not_refused() -> None:
    df = parse("ARG USED\nFROM scratch\nARG INSIDE\n",
               {"USED": "1", "INSIDE": "2", "EXTRA": "3", "no_proxy": "x"})
    assert df.unused_build_args == ("EXTRA",)


def test_automatic_platform_args_are_the_hosts() -> None:
    df = parse("FROM --platform=$BUILDPLATFORM alpine:$TARGETARCH\nARG TARGETARCH\n"
               "ARG TARGETOS\nWORKDIR /$TARGETOS-$TARGETARCH\n", {"TARGETARCH": "arm64"})
    assert df.stages[0].base == "alpine:amd64"
    assert df.stages[0].instructions[-1].args == ("/linux-amd64",)
    arm = parse_dockerfile("FROM --platform=linux/arm64/v8 alpine\n", {}, arch="arm64")
    assert arm.stages[0].base == "alpine"


# -- lines ---------------------------------------------------------------------------------

def test_continuations_with_comments_and_blank_lines_between() -> None:
    text = ("FROM scratch\n"
            "RUN apt-get update \\\n"
            "    # a comment inside the command\n"
            "\n"
            "    && apt-get install -y \\\n"
            "        curl\n"
            "ENV A=1 \\\n"
            "    B=2\n"
            "# the end\n"
            "WORKDIR /w\n")
    run, env, workdir = parse(text).stages[0].instructions
    assert run.args == ("apt-get update     && apt-get install -y         curl",)
    assert run.original == "RUN " + run.args[0] and run.line == 2
    assert (env.line, env.pairs) == (7, (("A", "1"), ("B", "2")))
    assert workdir.line == 10


@pytest.mark.parametrize(("text", "runs"), [
    ("FROM scratch\nRUN a \\   \nb\n", ["a b"]),  # spaces after the escape
    ("FROM scratch\nRUN echo \\\\\nRUN b\n", ["echo \\\\", "b"]),  # an escaped escape
    ("FROM scratch\nRUN a \\", ["a"]),  # a continuation at the end of the file
    ("\ufeffFROM scratch\r\nRUN a \\\r\n b\r\n", ["a  b"]),  # BOM and CRLF
    ("  FROM scratch\n\t RUN   echo   hi  \n", ["echo   hi"]),
])
def test_line_edge_cases(text: str, runs: list[str]) -> None:
    assert [i.args[0] for i in parse(text).stages[0].instructions] == runs


def test_escape_directive() -> None:
    text = ("# syntax=docker/dockerfile:1\n# escape=`\n\nFROM scratch\n"
            "WORKDIR C:\\Users\\app\nRUN dir `\n  c:\\\nCOPY `$NAME x\n")
    workdir, run, copy = parse(text).stages[0].instructions
    assert workdir.args == ("C:\\Users\\app",)
    assert run.args == ("dir   c:\\",) and run.line == 6
    assert copy.args == ("$NAME", "x")


@pytest.mark.parametrize("text", [
    "# a comment first\n# escape=`\nFROM scratch\nRUN a `\n",  # after a comment: a comment
    "# unknown=directive\n# escape=`\nFROM scratch\nRUN a `\n",
    "\n# escape=`\nFROM scratch\nRUN a `\n",
    "FROM scratch\n# escape=`\nRUN a `\n",
])
def test_directives_only_at_the_very_top(text: str) -> None:
    assert parse(text).stages[0].instructions[-1].args == ("a `",)


def test_directive_spelling_is_loose() -> None:
    assert parse("  #  ESCAPE =  `\nFROM scratch\nRUN a `\nb\n").stages[0].instructions[0] \
        .args == ("a b",)


# -- stages --------------------------------------------------------------------------------

def test_multi_stage_copy_from_name_number_and_image() -> None:
    df = parse("FROM golang:1.22 AS Build\nRUN go build -o /app\n"
               "FROM build AS test\nRUN go test\n"
               "FROM scratch\nCOPY --from=build /app /app\nCOPY --from=0 /app /app0\n"
               "COPY --from=BUILD /etc/passwd /etc/\nCOPY --from=nginx:1.27 /etc/nginx /n\n")
    assert [(s.index, s.name, s.base, s.base_stage, s.line) for s in df.stages] == [
        (0, "build", "golang:1.22", None, 1), (1, "test", "build", 0, 3),
        (2, None, "scratch", None, 5)]
    copies = df.stages[2].instructions
    assert [(c.source_stage, c.source_image) for c in copies] == [
        (0, None), (0, None), (0, None), (None, "nginx:1.27")]
    assert copies[0].flags == {"from": "build"}
    assert df.external_images == ("golang:1.22", "nginx:1.27")
    assert df.stage() is df.stages[2] and df.stage("TEST") is df.stages[1]
    assert [s.index for s in df.needed_for(df.stages[2])] == [0, 2]
    assert [s.index for s in df.needed_for(df.stages[1])] == [0, 1]
    with pytest.raises(ValidationFailed, match="no stage named 'nope'"):
        df.stage("nope")


def test_copy_from_may_use_args() -> None:
    df = parse("ARG SRC=builder\nFROM scratch AS builder\nFROM scratch\nARG SRC\n"
               "COPY --from=$SRC /a /b\n")
    assert df.stages[1].instructions[-1].source_stage == 0


def test_a_stage_may_share_its_base_images_name() -> None:
    df = parse("FROM alpine AS alpine\nFROM alpine\n")
    assert [s.base_stage for s in df.stages] == [None, 0]


# -- refusals ------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "line", "message"), [
    ("FROM scratch\nRUN --mount=type=cache,target=/root/.cache pip install x\n", 2,
     "RUN --mount is not supported"),
    ("FROM scratch\nRUN --network=none make\n", 2, "RUN --network is not supported"),
    ("FROM scratch\nRUN --security=insecure make\n", 2, "RUN --security is not supported"),
    ("FROM scratch\nRUN --device=x make\n", 2, "RUN --device is not supported"),
    ("FROM scratch\nCOPY --link a /b\n", 2, "COPY --link is not supported"),
    ("FROM scratch\nCOPY --parents a /b/\n", 2, "COPY --parents is not supported"),
    ("FROM scratch\nADD --checksum=sha256:00 a /b\n", 2, "ADD --checksum is not supported"),
    ("FROM scratch\nADD --from=x a /b\n", 2, "ADD --from is not supported"),
    ("FROM scratch\nENV --x=1 A=1\n", 2, "ENV --x is not supported"),
    ("FROM scratch\nCOPY --chown a /b\n", 2, "--chown needs a value"),
    ("FROM scratch\nCOPY --chown=1 --chown=2 a /b\n", 2, "--chown is given twice"),
    ("FROM scratch\nRUN <<EOF\necho hi\nEOF\n", 2, "heredocs"),
    ("FROM scratch\nRUN cat <<-'END' > /x\n", 2, "heredocs"),
    ("FROM scratch\nCOPY <<EOF /x\n", 2, "heredocs"),
    ("FROM scratch\nONBUILD RUN make\n", 2, "ONBUILD is not supported"),
    ("FROM scratch\nFROBNICATE x\n", 2, "unknown instruction 'FROBNICATE'"),
    ("RUN make\nFROM scratch\n", 1, "RUN comes before the first FROM"),
    ("# c\nARG A=1\nENV B=2\nFROM scratch\n", 3, "ENV comes before the first FROM"),
    ("FROM scratch\nCOPY --from=3 /a /b\n", 2, "stage 3 is not defined before this one"),
    ("FROM scratch\nFROM scratch\nCOPY --from=1 /a /b\n", 3, "stage 1 is not defined"),
    ("FROM scratch AS a\nCOPY --from=a /x /y\n", 2, "cannot copy from itself"),
    ("FROM scratch\nCOPY --from=later /x /y\nFROM scratch AS later\n", 2, "defined later"),
    ("FROM later\nFROM scratch AS later\n", 1, "defined later"),
    ("FROM scratch\nCOPY --from=Not_An_Image /x /y\n", 2, "is not a stage or an image"),
    ('FROM scratch\nCMD ["a", 1]\n', 2, "list of strings"),
    ("FROM scratch\nRUN [1, 2]\n", 2, "list of strings"),
    ('FROM scratch\nENTRYPOINT ["a"] && b\n', 2, "unexpected text after the JSON array"),
    ("FROM scratch\nRUN []\n", 2, "RUN needs a command"),
    ("FROM scratch\nSHELL /bin/bash -c\n", 2, "SHELL takes a JSON list"),
    ("FROM scratch\nADD https://example.com/x.tgz /x\n", 2, "only local sources"),
    ("FROM scratch\nADD git@github.com:moby/moby.git /src\n", 2, "only local sources"),
    ('FROM scratch\nADD ["a", "git://host/repo", "/src/"]\n', 2, "only local sources"),
    ("FROM --platform=linux/arm64 alpine\n", 1, "builds linux/amd64 images only"),
    ("ARG P=windows/amd64\nFROM --platform=$P alpine\n", 2, "--platform=windows/amd64"),
    ("FROM alpine AS\n", 1, "FROM takes an image and optionally AS name"),
    ("FROM alpine base\n", 1, "FROM takes an image"),
    ("FROM alpine AS 1st\n", 1, "is not a stage name"),
    ("FROM alpine AS scratch\n", 1, "is not a stage name"),
    ("FROM alpine AS a\nFROM alpine AS A\n", 2, "used twice"),
    ("FROM Alpine:3\n", 1, "is not a stage or an image"),
    ("FROM $NOTHING\n", 1, "empty after variable expansion"),
    ("FROM scratch\nENV A\n", 2, "ENV A needs a value"),
    ("FROM scratch\nENV A=1 B\n", 2, "name=value pairs, not 'B'"),
    ("FROM scratch\nLABEL =x\n", 2, "name=value pairs"),
    ("FROM scratch\nRUN\n", 2, "RUN needs arguments"),
    ("FROM scratch\nCOPY onlyone\n", 2, "needs at least one source and a destination"),
    ("FROM scratch\nCOPY a b /no-slash\n", 2, "destination ending /"),
    ("FROM scratch\nCOPY $NOPE /x\n", 2, "empty after variable expansion"),
    ("FROM scratch\nCOPY --chmod=u+x a /b\n", 2, "must be octal"),
    ("FROM scratch\nWORKDIR $NOPE\n", 2, "WORKDIR is empty"),
    ("FROM scratch\nSTOPSIGNAL SIGNOPE\n", 2, "is not a signal"),
    ("FROM scratch\nEXPOSE 80/http\n", 2, "EXPOSE '80/http'"),
    ("FROM scratch\nEXPOSE 70000\n", 2, "EXPOSE '70000'"),
    ("FROM scratch\nEXPOSE 9000-8000\n", 2, "EXPOSE '9000-8000'"),
    ("FROM scratch\nHEALTHCHECK --interval=5 CMD true\n", 2, "is not a duration"),
    ("FROM scratch\nHEALTHCHECK --retries=x CMD true\n", 2, "must be a whole number"),
    ("FROM scratch\nHEALTHCHECK --timeout= CMD true\n", 2, "must not be empty"),
    ("FROM scratch\nVOLUME $NOPE\n", 2, "VOLUME needs a path"),
    ("FROM scratch\nHEALTHCHECK --interval=5s NONE\n", 2, "NONE alone"),
    ("FROM scratch\nHEALTHCHECK curl x\n", 2, "CMD command"),
    ("FROM scratch\nHEALTHCHECK CMD []\n", 2, "HEALTHCHECK CMD needs a command"),
    ("FROM scratch\nARG =x\n", 2, "has no name"),
    ("# escape=a\nFROM scratch\n", 1, "the escape directive takes"),
    ("# escape=`\n# ESCAPE=`\nFROM scratch\n", 2, "given twice"),
    ("FROM scratch\nRUN a \\\n  b\nRUN --mount=x c\n", 4, "RUN --mount"),
])
def test_refusals_name_the_line(text: str, line: int, message: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse(text)
    assert caught.value.status == 400
    assert f"line {line}:" in caught.value.message
    assert message in caught.value.message


@pytest.mark.parametrize(("text", "message"), [
    ("", "the Dockerfile is empty"),
    ("# only a comment\n\n   \n", "the Dockerfile is empty"),
    ("ARG A=1\nARG B\n", "line 2: there is no FROM instruction"),
])
def test_a_dockerfile_needs_a_from(text: str, message: str) -> None:
    with pytest.raises(ValidationFailed, match=message):
        parse(text)


def test_nesting_is_bounded() -> None:
    with pytest.raises(ValidationFailed, match="nested too deeply"):
        last("WORKDIR " + "${A:-" * 100 + "x" + "}" * 100)


# -- helpers for the builder ---------------------------------------------------------------

@pytest.mark.parametrize(("head", "kind"), [
    (b"\x1f\x8b\x08\x00", "gzip"), (b"BZh91AY", "bzip2"), (b"\xfd7zXZ\x00\x00", "xz"),
    (b"\0" * 257 + b"ustar\x0000" + b"\0" * 243, "tar"), (b"hello", None), (b"", None),
])
def test_archive_kind(head: bytes, kind: str | None) -> None:
    assert archive_kind(head) == kind


@pytest.mark.parametrize(("text", "ns"), [
    ("0", 0), ("30s", 30 * 10**9), ("1m30s", 90 * 10**9), ("500ms", 5 * 10**8),
    ("1.5h", 5400 * 10**9), ("10us", 10**4),
])
def test_duration_ns(text: str, ns: int) -> None:
    assert duration_ns(text) == ns


@pytest.mark.parametrize(("machine", "arch"), [
    ("x86_64", "amd64"), ("AMD64", "amd64"), ("aarch64", "arm64"), ("arm64", "arm64"),
    ("riscv64", "riscv64"),
])
def test_host_arch(monkeypatch: pytest.MonkeyPatch, machine: str, arch: str) -> None:
    monkeypatch.setattr(platform, "machine", lambda: machine)
    assert host_arch() == arch
