"""A command-line or config mistake as a short message: the error first, a close match for a mistyped key, and
where to find the valid options, instead of jsonargparse's usage dump (over a hundred lines, error at the end)."""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib
import inspect
import itertools
import re
import shlex
import sys
from collections.abc import Iterable
from pathlib import PurePath

# How jsonargparse and argparse name an unknown key: a config file's key, or a flag on the command line.
_UNKNOWN_KEY = (
    re.compile(r"does not accept option '([\w.\-]+)'"),
    re.compile(r"unrecognized arguments: --([\w.\-]+)"),
    re.compile(r"Key '([\w.\-]+)' is not expected"),
)

# A setting whose value is a class, a dataclass or a Union of Literals (model.arch.lighthouse, model.optimizer,
# stage.schedule, trainer.precision) fails as 'Parser key "X":' followed by every Union subtype jsonargparse
# tried; the one line that matters is buried in it. These read that dump.
_PARSER_KEY = re.compile(r'Parser key "([\w.\-]+)":')
_NOT_ACCEPTED = re.compile(r"Option '([^']+)' is not accepted")
_CLASS_PATH = re.compile(r"class_path[= ]'([\w.]+)'")  # "given class_path 'X'" and "Namespace(class_path='X'"
_SUBTYPES = re.compile(r"^\s*Subtypes: \[(.*)\]$", re.M)
_GIVEN_VALUE = re.compile(r"^\s*Given value: (.*)$", re.M)
_DOT_PATH = re.compile(r"Expected a dot import path string: (.*)$", re.M)
_LITERAL = re.compile(r"typing\.Literal\[([^\]]*)\]")
_NONE_TYPE = "<class 'NoneType'>"
_EXPECTED_CLASS = re.compile(r"Expected a <class '([\w.]+)'>")
_CLASS_PATH_SUBTYPE = re.compile(r"<class '(\w+(?:\.\w+)+)'>")  # a subtype with a module: a class a config can give
_BUILTIN_CLASS = re.compile(r"<class '\w+'>")  # int, float, NoneType: no module, so nothing a class_path could give
# "Got value: abc" or "Given value: abc", where jsonargparse may append ". Got value: Namespace(...)" of the parent.
_VALUE = re.compile(r"(?:Got|Given) value: (.*?)(?:\. Got value: .*)?$", re.M)


def unknown_key(message: str) -> str | None:
    for pattern in _UNKNOWN_KEY:
        found = pattern.search(message)
        if found:
            return found.group(1)
    return None


def close_match(key: str, known: Iterable[str]) -> str | None:
    """The known key a typo most likely meant (``model.arch.n_layer`` -> ``model.arch.n_layers``), or None.
    Keys are compared within the same group first, so a short field name is not matched to another group's."""
    known = sorted(set(known))
    group = key.rpartition(".")[0]
    same_group = [k for k in known if k.rpartition(".")[0] == group]
    for pool in (same_group, known):
        found = difflib.get_close_matches(key, pool, n=1, cutoff=0.75)
        if found:
            return found[0]
    return None


def close_options(option: str, options: Iterable[str]) -> list[str]:
    """The options of one class that ``option`` most likely meant, best first. Short names are compared (full
    keys share a long prefix that makes any two look alike), and a name the typo begins is kept too: ``pooling``
    is ``pooling_factor`` cut short, which difflib alone scores too low to suggest."""
    options = list(options)
    found = difflib.get_close_matches(option, options, n=3, cutoff=0.6)
    return found + [o for o in options if o.startswith(option) and o not in found][: 3 - len(found)]


def _imported(class_path: str) -> type | None:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def class_options(class_path: str, callable_type: bool) -> list[str]:
    """The keyword arguments jsonargparse accepts for ``class_path``, or [] when the class cannot be read.

    For a callable type (model.optimizer is ``Callable[[Iterable], Optimizer]``) the first argument is the one the
    code passes (the parameters), not an option."""
    cls = _imported(class_path)
    try:
        params = list(inspect.signature(cls).parameters.values()) if cls is not None else []
    except (ValueError, TypeError):  # a builtin or extension class without a readable signature
        return []
    params = params[1:] if callable_type else params
    return [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _given_value(dump: str):
    """The value the dump says it was given (the last 'Given value:' line is the setting's own), as Python."""
    values = _GIVEN_VALUE.findall(dump)
    try:
        return ast.literal_eval(values[-1]) if values else None
    except (ValueError, SyntaxError):
        return values[-1]


def option_owner(setting: str, dump: str, option: str) -> str:
    """The dotted key the unknown ``option`` was given under: ``model.arch.lighthouse`` (a dataclass's fields sit
    directly under it), ``model.optimizer.init_args`` (any other class takes its arguments there), or
    ``stage.schedule[0]`` (the list item that holds it)."""
    given = _given_value(dump)
    if isinstance(given, list):
        index = next((i for i, item in enumerate(given) if isinstance(item, dict) and option in item), None)
        return f"{setting}[{'' if index is None else index}]"
    found = _CLASS_PATH.search(dump)
    cls = _imported(found.group(1)) if found else None
    return setting if cls is None or dataclasses.is_dataclass(cls) else f"{setting}.init_args"


def yaml_spacing_hint(option: str) -> str:
    # YAML's flow mapping needs a space after the colon: {start:0} is the single key 'start:0' with no value.
    name, _, value = option.partition(":")
    return f"YAML reads '{option}' as one key: write '{name}: {value}', with a space after the colon"


def unknown_nested_option(setting: str, dump: str) -> str | None:
    """One line for an unknown key inside a nested setting: its full dotted key and the close matches, or the
    YAML spacing mistake behind it."""
    found = _NOT_ACCEPTED.search(dump)
    if not found:
        return None
    option = found.group(1)
    owner = option_owner(setting, dump, option)
    class_path = _CLASS_PATH.search(dump)
    callable_type = "expects a function or a callable class" in dump
    options = class_options(class_path.group(1), callable_type) if class_path else []
    line = f"{owner}.{option} is not an option"
    listed = f" (options of {owner}: {', '.join(options)})" if options else ""
    if ":" in option:
        return f"{line}: {yaml_spacing_hint(option)}{listed}"
    matches = close_options(option, options)
    if matches:
        return f"{line}; did you mean {' or '.join(f'{owner}.{m}' for m in matches)}?"
    return line + listed


def _subtypes(dump: str) -> list[str]:
    found = _SUBTYPES.search(dump)
    return re.split(r",\s*(?=typing\.|<class |\w+\[)", found.group(1)) if found else []


def literal_choices(dump: str) -> list[str] | None:
    """The accepted values of a setting typed as a Union of Literals (and None), in the order the type lists them,
    or None for any other type."""
    subtypes = _subtypes(dump)
    if not subtypes or not all(_LITERAL.fullmatch(s) or s == _NONE_TYPE for s in subtypes):
        return None
    choices: list[str] = []
    for subtype in subtypes:
        try:
            values = ast.literal_eval(f"[{_LITERAL.fullmatch(subtype).group(1)}]") if subtype != _NONE_TYPE else [None]
        except (ValueError, SyntaxError):  # a Literal of enum members or other objects: the dump is all there is
            return None
        choices += [str(v) if v is not None else "null" for v in values]
    return list(dict.fromkeys(choices))  # trainer.precision lists 16 and '16': a command line shows both as 16


def invalid_choice(setting: str, dump: str) -> str | None:
    choices = literal_choices(dump)
    if choices is None:
        return None
    given = _GIVEN_VALUE.findall(dump)
    value = given[-1] if given else "?"
    return f"{setting}={value} is invalid: valid values are {', '.join(choices)}"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def lines_under(dump: str, position: int) -> str:
    """The lines the dump indents below the line holding ``position``: the errors of that line's key alone, not
    those of the Union subtypes tried after it (``- Expected a <class 'NoneType'>`` of the outer setting)."""
    line_start = dump.rfind("\n", 0, position) + 1
    indent = _indent(dump[line_start:position])
    block = []
    for line in dump[position:].split("\n")[1:]:
        if line.strip() and _indent(line) <= indent:
            break
        block.append(line)
    return "\n".join(block)


def expected_types(block: str) -> list[str]:
    """The types ``block`` says it expected, short and as a config writes them: ``int``, ``float``, ``null``.
    Subtypes that are not plain classes (a Tensor's "dot import path") cannot be typed on a command line."""
    names = [name.rpartition(".")[2] for name in _EXPECTED_CLASS.findall(block)]
    return list(dict.fromkeys("null" if name == "NoneType" else name for name in names))


def wrong_type(setting: str, dump: str) -> str | None:
    """One line for a value of the wrong type: the full dotted key, the value given and the type expected.

    Inside a nested setting (a dataclass field, a class's init_args, a list item) the dump holds a second
    'Parser key' for the field; its own lines say what it expected. A setting of its own counts only when every
    subtype is a plain class (``int | None``): for a class-typed setting 'Expected NoneType' is not the point."""
    inner = next(itertools.islice(_PARSER_KEY.finditer(dump), 1, None), None)
    if inner is not None:
        option = inner.group(1)
        key = f"{option_owner(setting, dump, option)}.{option}"
        block = lines_under(dump, inner.end())
    elif all(_BUILTIN_CLASS.fullmatch(subtype) for subtype in _subtypes(dump)):
        key, block = setting, dump
    else:
        return None
    expected = expected_types(block)
    if not expected:
        return None
    value = _VALUE.search(block)
    return f"{key}={value.group(1) if value else '?'} is invalid: expected {' or '.join(expected)}"


def plain_value_for_a_class(setting: str, dump: str) -> str | None:
    """One line for a plain value where the setting takes a class: its fields for a dataclass
    (model.arch.lighthouse), else a class path and its init_args (model.optimizer)."""
    found = _DOT_PATH.search(dump)
    if not found or len(_PARSER_KEY.findall(dump)) > 1:  # a field of a nested setting: wrong_type's case
        return None
    value = found.group(1)
    dataclass_paths = [m for m in _CLASS_PATH_SUBTYPE.findall(dump) if dataclasses.is_dataclass(_imported(m))]
    if dataclass_paths:
        fields = class_options(dataclass_paths[0], callable_type=False)
        return (
            f"{setting}={value} is invalid: it takes fields ({', '.join(fields)}), each as --{setting}.<field> VALUE "
            "or as a YAML mapping, or null"
        )
    return (
        f"{setting}={value} is invalid: it takes a class by its import path (module.Class) with its init_args, or null"
    )


def nested_problem(message: str) -> str | None:
    """One line for the Union dumps of a nested setting, or None where the message is another kind."""
    found = _PARSER_KEY.match(message)
    if not found:
        return None
    setting = found.group(1)
    return (
        unknown_nested_option(setting, message)
        or invalid_choice(setting, message)
        or plain_value_for_a_class(setting, message)
        or wrong_type(setting, message)
    )


def shell_expanded_glob_hint(first_line: str, argv: list[str]) -> str | None:
    """A hint when the extra arguments follow ``--data.corpus``'s value: the shell expanded an unquoted glob into
    one argument per file, and only the first reached data.corpus."""
    found = re.match(r"unrecognized arguments: (.+)", first_line)
    if not found or found.group(1).startswith("-"):
        return None
    extras = found.group(1)
    for i, arg in enumerate(argv[:-2]):
        if arg == "--data.corpus" and " ".join(argv[i + 2 :]).startswith(extras):
            files = [PurePath(argv[i + 1]), *map(PurePath, extras.split())]
            return (
                f"  --data.corpus takes one path or glob, and the shell expanded an unquoted glob into "
                f"{len(files)} files: quote it, e.g. --data.corpus {shlex.quote(_glob_for(files))}"
            )
    return None


def config_files(argv: list[str]) -> list[str]:
    """The --config values of a command line, in order (``--config X`` and ``--config=X``)."""
    found = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--config"]
    return found + [arg.partition("=")[2] for arg in argv if arg.startswith("--config=")]


def unparsable_config(argv: list[str]) -> str | None:
    """The first --config file that is not valid YAML: jsonargparse's message names the text it parsed only as
    "<unicode string>", which with several configs leaves the user guessing which file holds the mistake."""
    import yaml

    for path in config_files(argv):
        try:
            with open(path, encoding="utf-8") as f:
                yaml.safe_load(f)
        except (OSError, UnicodeDecodeError):
            continue  # jsonargparse says what is wrong with a file it cannot read
        except yaml.YAMLError:
            return path
    return None


def _glob_for(files: list[PurePath]) -> str:
    """A glob that matches ``files``: their folder and, when they share it, their suffix (doc1.txt -> '*.txt')."""
    suffixes = {f.suffix for f in files}
    folder = files[0].parent if len({f.parent for f in files}) == 1 else PurePath("DIR")
    return str(folder / f"*{suffixes.pop() if len(suffixes) == 1 else ''}")


# configs/ lives in the repository, not in the installed package (pip install . copies only src/lighthouse).
MISSING_CONFIG_HINT = (
    "  the shipped configs (configs/demo.yaml, ...) come with a clone of the repository, not with the installed "
    "package: run from the repository root, or pass the path of your own YAML file"
)


def describe(message: str, known: Iterable[str], prog: str, argv: list[str] | None = None) -> str:
    """The text to print for a parse error ``message``: its first line, a suggestion, the details, the help hint.
    ``argv`` is the command line (default: this process's), read only to recognise a glob the shell expanded."""
    help_hint = f"(`{prog} --help` lists every option with its documentation)"
    problem = nested_problem(str(message).strip())
    if problem:
        return f"error: {problem}\n{help_hint}"
    first, _, details = str(message).strip().partition("\n")
    given = sys.argv[1:] if argv is None else argv
    if first.startswith("Problems parsing config") and "<unicode string>" in message:
        bad = unparsable_config(given)
        if bad is not None:
            first = first.replace("Problems parsing config", f"--config {bad} is not valid YAML")
            details = details.replace('"<unicode string>"', bad)
    lines = [f"error: {first}"]
    key = unknown_key(first)
    match = close_match(key, known) if key else None
    if match:
        lines.append(f"  did you mean {match}?")
    glob_hint = shell_expanded_glob_hint(first, given)
    if glob_hint:
        lines.append(glob_hint)
    if first.startswith('Parser key "config": File does not exist'):
        lines.append(MISSING_CONFIG_HINT)
    if details.strip():
        lines.append(details.rstrip())
    lines.append(help_hint)
    return "\n".join(lines)


def report(message: str, known: Iterable[str], prog: str, argv: list[str] | None = None) -> None:
    print(describe(message, known, prog, argv), file=sys.stderr, flush=True)
