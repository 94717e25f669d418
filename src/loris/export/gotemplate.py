"""Render Ollama TEMPLATEs (Go ``text/template``) for checking a Modelfile against its chat template.

Two renderers share one input, built by `ollama_chat`:

* `render_with_go` runs Go's own ``text/template`` (a small program compiled with the ``go`` toolchain on
  first use in a process; Go's build cache makes later builds quick) — the real semantics;
* `render_template` is a pure-Python interpreter of the subset of Go template syntax that loris' own
  TEMPLATEs use (text, ``{{-``/``-}}`` trimming, ``if``/``else if``/``else``, ``range`` with and without
  ``$i, $x :=``, ``with``, ``break``/``continue``, variables declared with ``:=`` and assigned with ``=``,
  fields of ``.``/``$``/variables, string/number/bool literals, parentheses, pipelines, and the functions
  ``and or not eq ne lt le gt ge len slice index print``). Anything else raises `UnsupportedTemplate`.
  ``tests/export/test_validate.py`` checks it against Go's renders of every template loris writes.

`ollama_chat` turns a chat into what Ollama hands its template (``template.Execute``): every system
message's text joined by blank lines as ``.System`` (the system messages also stay in ``.Messages``),
consecutive messages of one role merged, and the Modelfile ``SYSTEM`` put in front of a chat that has no
system message.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "GoTemplateError",
    "UnsupportedTemplate",
    "Message",
    "ollama_chat",
    "render_template",
    "render_with_go",
    "go_available",
]


class GoTemplateError(ValueError):
    """The template does not parse, or failed while executing (as Go's would)."""


class UnsupportedTemplate(GoTemplateError):
    """Syntax outside the subset the pure-Python renderer implements (render it with Go instead)."""


@dataclass
class Message:
    """One entry of ``.Messages`` (a Go struct: unknown fields are an error, unlike map keys)."""

    Role: str
    Content: str


def ollama_chat(messages: list[dict], modelfile_system: str | None = None) -> dict[str, Any]:
    """The data Ollama executes a ``.Messages`` TEMPLATE with, for a list of ``{"role", "content"}``."""
    if modelfile_system and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": modelfile_system}, *messages]
    system = [m["content"] for m in messages if m["role"] == "system"]
    merged: list[Message] = []
    for m in messages:
        if merged and merged[-1].Role == m["role"]:
            merged[-1].Content += "\n\n" + m["content"]
        else:
            merged.append(Message(m["role"], m["content"]))
    return {"System": "\n\n".join(system), "Messages": merged, "Prompt": "", "Response": ""}


# ---------------------------------------------------------------------------------- lexing

_SPACE = " \t\r\n"
_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>"(?:[^"\\\n]|\\.)*")
    | (?P<raw>`[^`]*`)
    | (?P<num>-?\d+(?:\.\d+)?)
    | (?P<decl>:=)
    | (?P<op>[()|,=])
    | (?P<var>\$\w*(?:\.\w+)*)
    | (?P<field>(?:\.\w+)+|\.)
    | (?P<ident>[A-Za-z_]\w*)
    )""",
    re.X,
)


def _split_actions(text: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", inside)], with ``{{-``/``-}}`` trimming applied to the texts."""
    parts: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    while True:
        start = text.find("{{", pos)
        chunk = text[pos:] if start < 0 else text[pos:start]
        if trim_next:
            chunk = chunk.lstrip(_SPACE)
        if start < 0:
            if chunk:
                parts.append(("text", chunk))
            return parts
        i = start + 2
        if text.startswith("-", i) and i + 1 < len(text) and text[i + 1] in _SPACE:
            chunk = chunk.rstrip(_SPACE)
            i += 1
        if chunk:
            parts.append(("text", chunk))
        # scan to the closing }} outside quotes
        j, quote = i, None
        while j < len(text):
            c = text[j]
            if quote:
                if c == "\\" and quote == '"':
                    j += 2
                    continue
                if c == quote:
                    quote = None
            elif c in '"`':
                quote = c
            elif text.startswith("}}", j):
                break
            j += 1
        else:
            raise GoTemplateError(f"unclosed action starting at char {start}")
        inside = text[i:j]
        trim_next = False
        if inside.endswith("-") and len(inside) >= 2 and inside[-2] in _SPACE:
            inside = inside[:-1]
            trim_next = True
        parts.append(("action", inside.strip(_SPACE)))
        pos = j + 2


def _lex(action: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(action):
        if action[pos:].strip(_SPACE) == "":
            break
        m = _TOKEN.match(action, pos)
        if not m:
            raise UnsupportedTemplate(f"cannot read {action[pos:]!r} in {{{{ {action} }}}}")
        kind = m.lastgroup
        text = m.group(kind)
        if kind == "field" and m.start(kind) == pos and out and out[-1] == ("op", ")"):
            kind = "chain"  # (pipeline).Field
        out.append((kind, text))
        pos = m.end()
    return out


# ---------------------------------------------------------------------------------- parsing

# nodes: ("text", s) | ("pipe", Pipeline) | ("if", [(pipe, body)...], else_body)
#        | ("range", vars, pipe, body, else_body) | ("with", [(pipe, body)...], else_body)
#        | ("break",) | ("continue",)


@dataclass
class Pipeline:
    decl: list[str]  # variable names declared / assigned
    op: str | None  # ":=", "=" or None
    commands: list[list[tuple[str, Any]]]  # each command: operands


def _parse_pipeline(tokens: list[tuple[str, str]], source: str) -> Pipeline:
    decl: list[str] = []
    op = None
    # "$x :=", "$x =", "$i, $x :="
    k = 0
    names = []
    while k < len(tokens) and tokens[k][0] == "var" and "." not in tokens[k][1]:
        names.append(tokens[k][1])
        if k + 1 < len(tokens) and tokens[k + 1] == ("op", ","):
            k += 2
            continue
        break
    if (
        names
        and k + 1 < len(tokens)
        and tokens[k + 1][0] in ("decl", "op")
        and tokens[k + 1][1] in (":=", "=")
    ):
        decl, op = names, tokens[k + 1][1]
        tokens = tokens[k + 2 :]
    commands: list[list[tuple[str, Any]]] = [[]]
    stack = [commands]
    for kind, value in tokens:
        if value == "(" and kind == "op":
            sub: list[list[tuple[str, Any]]] = [[]]
            stack[-1][-1].append(("pipe", Pipeline([], None, sub)))
            stack.append(sub)
        elif value == ")" and kind == "op":
            if len(stack) == 1:
                raise GoTemplateError(f"unmatched ')' in {{{{ {source} }}}}")
            stack.pop()
        elif value == "|" and kind == "op":
            stack[-1].append([])
        elif kind == "chain":
            target = stack[-1][-1]
            target[-1] = ("chain", (target[-1], value))
        elif kind in ("str", "raw", "num", "var", "field", "ident"):
            stack[-1][-1].append((kind, value))
        else:
            raise UnsupportedTemplate(f"{value!r} in {{{{ {source} }}}}")
    if len(stack) != 1:
        raise GoTemplateError(f"unclosed '(' in {{{{ {source} }}}}")
    if any(not c for c in commands):
        raise GoTemplateError(f"missing value in {{{{ {source} }}}}")
    return Pipeline(decl, op, commands)


def _parse(text: str) -> list:
    parts = _split_actions(text)
    pos = 0

    def block(stop: tuple[str, ...]) -> tuple[list, str, list]:
        """Nodes until an action whose first word is in ``stop``; returns (nodes, that word, its tokens)."""
        nonlocal pos
        nodes: list = []
        while pos < len(parts):
            kind, value = parts[pos]
            pos += 1
            if kind == "text":
                nodes.append(("text", value))
                continue
            if value.startswith("/*"):
                if not value.endswith("*/"):
                    raise GoTemplateError(f"unclosed comment {{{{{value}}}}}")
                continue
            tokens = _lex(value)
            if not tokens:
                raise GoTemplateError("empty action {{ }}")
            head = tokens[0][1] if tokens[0][0] == "ident" else None
            if head in ("end", "else") and head in stop:
                return nodes, head, tokens
            if head in ("end", "else"):
                raise GoTemplateError(f"unexpected {{{{ {value} }}}}")
            if head in ("if", "with"):
                nodes.append(conditional(head, tokens[1:], value))
            elif head == "range":
                pipe = _parse_pipeline(tokens[1:], value)
                body, word, _ = block(("end", "else"))
                other = block(("end",))[0] if word == "else" else []
                nodes.append(("range", pipe, body, other))
            elif head in ("break", "continue"):
                nodes.append((head,))
            elif head in ("define", "template", "block"):
                raise UnsupportedTemplate(f"{{{{ {head} }}}} is not supported")
            else:
                nodes.append(("pipe", _parse_pipeline(tokens, value)))
        if stop:
            raise GoTemplateError(f"missing {{{{ end }}}} (expected one of {', '.join(stop)})")
        return nodes, "", []

    def conditional(head: str, tokens, source) -> tuple:
        branches = []
        while True:
            pipe = _parse_pipeline(tokens, source)
            body, word, rest = block(("end", "else"))
            branches.append((pipe, body))
            if word == "end":
                return (head, branches, [])
            if len(rest) > 1 and rest[1] == ("ident", head):  # "else if ..." / "else with ..."
                tokens, source = rest[2:], source
                continue
            if len(rest) > 1:
                raise UnsupportedTemplate(f"{{{{ else {rest[1][1]} }}}} after {{{{ {head} }}}}")
            other = block(("end",))[0]
            return (head, branches, other)

    nodes, _, _ = block(())
    return nodes


# ---------------------------------------------------------------------------------- execution


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


_MISSING = object()


def _truth(v: Any) -> bool:
    if v is None or v is _MISSING:
        return False
    if isinstance(v, (bool, int, float, str, list, tuple, dict)):
        return bool(v)
    return True  # structs are always true


def _text(v: Any) -> str:
    if v is None or v is _MISSING:
        return "<no value>"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _length(v: Any) -> int:
    if isinstance(v, str):
        return len(v.encode())
    if isinstance(v, (list, tuple, dict)):
        return len(v)
    raise GoTemplateError(f"len of {type(v).__name__}")


def _slice(v: Any, *idx: int) -> Any:
    if len(idx) > 2:
        raise UnsupportedTemplate("slice with 3 indices")
    if not isinstance(v, (str, list, tuple)):
        raise GoTemplateError(f"can't slice {type(v).__name__}")
    seq = v.encode() if isinstance(v, str) else v
    lo, hi = (idx[0] if idx else 0), (idx[1] if len(idx) > 1 else len(seq))
    if not 0 <= lo <= hi <= len(seq):
        raise GoTemplateError(f"slice index out of range: {idx} of {len(seq)}")
    return seq[lo:hi].decode(errors="replace") if isinstance(v, str) else list(seq[lo:hi])


def _compare(name: str, a: Any, b: Any) -> bool:
    if type(a) is not type(b) and not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
        raise GoTemplateError(f"{name}: incompatible types for comparison ({a!r}, {b!r})")
    return {"lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b}[name]


def _eq(a: Any, *others: Any) -> bool:
    if not others:
        raise GoTemplateError("eq needs two arguments")
    for b in others:
        numbers = isinstance(a, (int, float)) and isinstance(b, (int, float))
        if type(a) is not type(b) and not numbers and a is not None and b is not None:
            raise GoTemplateError(f"eq: incompatible types for comparison ({a!r}, {b!r})")
        if a == b:
            return True
    return False


def _index(v: Any, *keys: Any) -> Any:
    for k in keys:
        try:
            v = v[k]
        except (IndexError, KeyError, TypeError) as e:
            raise GoTemplateError(f"index {k!r}: {e}") from None
    return v


_FUNCS = {
    "not": lambda v: not _truth(v),
    "eq": _eq,
    "ne": lambda a, b: not _eq(a, b),
    "lt": lambda a, b: _compare("lt", a, b),
    "le": lambda a, b: _compare("le", a, b),
    "gt": lambda a, b: _compare("gt", a, b),
    "ge": lambda a, b: _compare("ge", a, b),
    "len": _length,
    "slice": _slice,
    "index": _index,
    "print": lambda *a: _sprint(a),
}


def _sprint(args: tuple) -> str:
    """Go's fmt.Sprint: a space between operands when neither is a string."""
    out = ""
    for k, a in enumerate(args):
        if k and not isinstance(a, str) and not isinstance(args[k - 1], str):
            out += " "
        out += _text(a)
    return out


class _Runner:
    def __init__(self, data: Any):
        self.root = data
        self.scopes: list[dict[str, Any]] = [{"$": data}]
        self.out: list[str] = []

    # -- values
    def lookup(self, name: str) -> Any:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        raise GoTemplateError(f"undefined variable {name}")

    def assign(self, name: str, value: Any) -> None:
        for scope in reversed(self.scopes):
            if name in scope:
                scope[name] = value
                return
        raise GoTemplateError(f"undefined variable {name}")

    @staticmethod
    def field(obj: Any, name: str) -> Any:
        if isinstance(obj, dict):
            return obj.get(name, _MISSING)
        if obj is None or obj is _MISSING:
            raise GoTemplateError(f"nil pointer evaluating .{name}")
        if not hasattr(obj, name):
            raise GoTemplateError(f"can't evaluate field {name} in type {type(obj).__name__}")
        return getattr(obj, name)

    def operand(self, kind: str, value: Any, dot: Any) -> Any:
        if kind == "pipe":
            return self.pipeline(value, dot)
        if kind == "chain":
            obj = self.operand(*value[0], dot)
            for name in value[1].split(".")[1:]:
                obj = self.field(obj, name)
            return obj
        if kind == "str":
            return json.loads(value)
        if kind == "raw":
            return value[1:-1]
        if kind == "num":
            return float(value) if "." in value else int(value)
        if kind == "field":
            obj = dot
            for name in value.split(".")[1:]:
                if name:
                    obj = self.field(obj, name)
            return obj
        if kind == "var":
            head, *rest = value.split(".")
            obj = self.lookup(head)
            for name in rest:
                obj = self.field(obj, name)
            return obj
        if kind == "ident":
            if value in ("true", "false"):
                return value == "true"
            if value == "nil":
                return None
            raise UnsupportedTemplate(f"function {value!r} is not supported")
        raise GoTemplateError(f"unexpected {value!r}")

    def command(self, cmd: list[tuple[str, Any]], dot: Any, piped: Any = _MISSING) -> Any:
        kind, value = cmd[0]
        if kind == "ident" and value in ("and", "or"):
            args = [lambda k=k, v=v: self.operand(k, v, dot) for k, v in cmd[1:]]
            if piped is not _MISSING:
                args.append(lambda: piped)
            if not args:
                raise GoTemplateError(f"{value} needs arguments")
            result = None
            for get in args:
                result = get()
                if _truth(result) == (value == "or"):
                    return result
            return result
        if kind == "ident" and value not in ("true", "false", "nil"):
            if value not in _FUNCS:
                raise UnsupportedTemplate(f"function {value!r} is not supported")
            args = [self.operand(k, v, dot) for k, v in cmd[1:]]
            if piped is not _MISSING:
                args.append(piped)
            try:
                return _FUNCS[value](*args)
            except TypeError as e:
                raise GoTemplateError(f"{value}: {e}") from None
        if len(cmd) > 1 or piped is not _MISSING:
            raise GoTemplateError(f"{value} is not a function")
        return self.operand(kind, value, dot)

    def pipeline(self, pipe: Pipeline, dot: Any) -> Any:
        value = _MISSING
        for cmd in pipe.commands:
            value = self.command(cmd, dot, value)
        if pipe.op == ":=":
            if len(pipe.decl) != 1:
                raise GoTemplateError("too many declarations")
            self.scopes[-1][pipe.decl[0]] = value
        elif pipe.op == "=":
            self.assign(pipe.decl[0], value)
        return value

    # -- nodes
    def run(self, nodes: list, dot: Any) -> None:
        for node in nodes:
            kind = node[0]
            if kind == "text":
                self.out.append(node[1])
            elif kind == "pipe":
                value = self.pipeline(node[1], dot)
                if node[1].op is None:
                    self.out.append(_text(value))
            elif kind in ("if", "with"):
                self.conditional(node, dot)
            elif kind == "range":
                self.range(node, dot)
            elif kind == "break":
                raise _Break
            elif kind == "continue":
                raise _Continue

    def body(self, nodes: list, dot: Any, variables: dict[str, Any] | None = None) -> None:
        self.scopes.append(dict(variables or {}))
        try:
            self.run(nodes, dot)
        finally:
            self.scopes.pop()

    def conditional(self, node: tuple, dot: Any) -> None:
        kind, branches, other = node
        for pipe, body in branches:
            self.scopes.append({})  # a declaration in the condition is visible in the body only
            try:
                value = self.pipeline(pipe, dot)
                if _truth(value):
                    self.body(body, value if kind == "with" else dot)
                    return
            finally:
                self.scopes.pop()
        self.body(other, dot)

    def range(self, node: tuple, dot: Any) -> None:
        _, pipe, body, other = node
        items = self.command_value(pipe, dot)
        if isinstance(items, dict):
            pairs = sorted(items.items())
        elif isinstance(items, (list, tuple)):
            pairs = list(enumerate(items))
        elif items is None or items is _MISSING:
            pairs = []
        else:
            raise GoTemplateError(f"range can't iterate over {items!r}")
        if not pairs:
            self.body(other, dot)
            return
        for key, item in pairs:
            names = pipe.decl
            variables = {}
            if len(names) == 1:
                variables[names[0]] = item
            elif len(names) == 2:
                variables[names[0]], variables[names[1]] = key, item
            try:
                self.body(body, item, variables)
            except _Break:
                break
            except _Continue:
                continue

    def command_value(self, pipe: Pipeline, dot: Any) -> Any:
        value = _MISSING
        for cmd in pipe.commands:
            value = self.command(cmd, dot, value)
        return value


@functools.lru_cache(maxsize=64)
def _parsed(template: str) -> list:
    return _parse(template)


def render_template(template: str, data: Any) -> str:
    """Execute a Go template (the subset in the module docstring) on ``data`` (see `ollama_chat`)."""
    runner = _Runner(data)
    runner.run(_parsed(template), data)
    return "".join(runner.out)


# ---------------------------------------------------------------------------------- Go itself

_GO_PROGRAM = r"""package main

// Reads [{"template": ..., "data": {"System": ..., "Messages": [{"Role": ..., "Content": ...}]}}]
// on stdin and writes [{"text": ...} | {"error": ...}] on stdout.

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string
	Content string
}

type Data struct {
	System   string
	Messages []Message
	Prompt   string
	Response string
}

type Job struct {
	Template string
	Data     Data
}

func main() {
	var jobs []Job
	if err := json.NewDecoder(os.Stdin).Decode(&jobs); err != nil {
		panic(err)
	}
	results := []map[string]string{}
	for _, job := range jobs {
		tmpl, err := template.New("TEMPLATE").Parse(job.Template)
		if err != nil {
			results = append(results, map[string]string{"error": err.Error()})
			continue
		}
		values := map[string]any{
			"System": job.Data.System, "Messages": job.Data.Messages,
			"Prompt": job.Data.Prompt, "Response": job.Data.Response,
		}
		var sb strings.Builder
		if err := tmpl.Execute(&sb, values); err != nil {
			results = append(results, map[string]string{"error": err.Error()})
			continue
		}
		results = append(results, map[string]string{"text": sb.String()})
	}
	if err := json.NewEncoder(os.Stdout).Encode(results); err != nil {
		panic(err)
	}
}
"""


def go_available() -> bool:
    return shutil.which("go") is not None


@functools.lru_cache(maxsize=1)
def _go_binary() -> Path:
    go = shutil.which("go")
    if go is None:
        raise FileNotFoundError("the go toolchain is not on PATH")
    folder = Path(tempfile.mkdtemp(prefix="loris-gotemplate-"))
    (folder / "main.go").write_text(_GO_PROGRAM)
    env = {**os.environ, "GO111MODULE": "off"}
    if "GOCACHE" not in env and not (Path.home() / ".cache").is_dir():
        env["GOCACHE"] = str(folder / "cache")
    result = subprocess.run(
        [go, "build", "-o", str(folder / "render"), str(folder / "main.go")],
        capture_output=True,
        text=True,
        env=env,
        cwd=folder,
    )
    if result.returncode != 0:
        raise RuntimeError(f"building the Go template renderer failed: {result.stderr.strip()}")
    return folder / "render"


def render_with_go(jobs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Render each (template, data from `ollama_chat`) with Go's text/template; GoTemplateError on failure."""
    payload = [
        {
            "Template": template,
            "Data": {
                "System": data.get("System", ""),
                "Messages": [{"Role": m.Role, "Content": m.Content} for m in data.get("Messages", [])],
                "Prompt": data.get("Prompt", ""),
                "Response": data.get("Response", ""),
            },
        }
        for template, data in jobs
    ]
    result = subprocess.run(
        [str(_go_binary())], input=json.dumps(payload), capture_output=True, text=True, check=True
    )
    out = []
    for item in json.loads(result.stdout):
        if "error" in item:
            raise GoTemplateError(item["error"])
        out.append(item["text"])
    return out
