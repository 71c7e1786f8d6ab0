"""jsonargparse's error messages, several lines each, as the one line ``arlm`` prints: the
option, the value, and what is allowed (``argument --model.n_layers: 'x' is not an int``)."""

from __future__ import annotations

import dataclasses
import difflib
import re

import jsonargparse

from arlm_jax.config import KIND_NAMES
from arlm_jax.models import families, get_family

_KINDS = {kind.__name__: name for kind, name in KIND_NAMES.items()}  # by the class name jsonargparse shows


def describe(message: str, parser: jsonargparse.ArgumentParser | None, where: str = "line") -> str:
    """One line for a parse error of the command line (``where="line"``) or of a config file's
    values (``where="file"``); ``parser`` (the subcommand's) supplies the options a hint names."""
    typed = _type_error(message)
    if typed is not None:
        key, value, allowed = typed
        if where == "file":
            return f"{key}={value!r} is not {allowed}"
        return f"argument {_option(key)}: {value!r} is not {allowed}"
    options = _options(parser)
    if message.startswith("unrecognized arguments: "):
        return _unknown_option(message.split(": ", 1)[1].split(), parser, options)
    if m := re.fullmatch(r"(?:Validation failed: )?Group '(\w+)' does not accept (?:option|nested key) '(.+)'",
                         message.strip()):
        return _unknown_field(m[1], m[2], parser, options, shown=f"{m[1]}.{m[2]} is not an option", dashes="")
    if m := re.fullmatch(r"the following arguments are required: (.+)", message.strip()):
        names = [_required(k, options) for k in m[1].split(", ")]
        return f"the following arguments are required: {', '.join(names)}"
    return " ".join(message.split())


def _type_error(message: str) -> tuple[str, str, str] | None:
    """(key, value, what is allowed) of a 'Parser key "K": Expected ... Got value: V' message."""
    key = re.match(r'Parser key "([^"]+)":', message)
    value = re.findall(r"(?:Got|Given) value: (.*)", message)
    subtypes = re.search(r"Subtypes: \[(.*?)\]", message)
    kinds = re.findall(r"<class '(\w+)'>", subtypes[1]) if subtypes else re.findall(r"Expected a <class '(\w+)'>", message)
    if not (key and value and kinds):
        return None
    kinds = sorted(dict.fromkeys(kinds), key=lambda k: k == "NoneType")  # "an int or none"
    return key[1], value[-1], " or ".join(_KINDS.get(k, k) for k in kinds)


def _option(key: str) -> str:
    """The option of a parser key: ``model.n_layers`` -> ``--model.n_layers``, ``num_processes``
    -> ``--num-processes`` (the CLI spells its own options with dashes)."""
    return f"--{key}" if "." in key else f"--{key.replace('_', '-')}"


def _required(key: str, options: list[str]) -> str:
    """A required argument as the user writes it (``generate.checkpoint`` -> ``--checkpoint``)."""
    name = key.rsplit(".", 1)[-1]
    return _option(name) if _option(name) in options else name


def _options(parser: jsonargparse.ArgumentParser | None) -> list[str]:
    """Every option string of a parser, read from its usage line."""
    if parser is None:
        return []
    return list(dict.fromkeys(re.findall(r"(?<![\w-])--\w[\w.-]*", parser.format_usage())))


def _unknown_option(extra: list[str], parser, options: list[str]) -> str:
    bad = next((e for e in extra if e.startswith("-")), None)
    if bad is None:
        return f"unexpected argument {extra[0]!r}"
    name = bad.split("=", 1)[0]
    section, _, field = name[2:].partition(".")
    if field and any(o.startswith(f"--{section}.") for o in options):
        return _unknown_field(section, field, parser, options, shown=f"unknown option {name!r}")
    hint = difflib.get_close_matches(name, options, n=1)
    return f"unknown option {name!r}" + (f" (did you mean {hint[0]}?)" if hint else "")


def _unknown_field(section: str, field: str, parser, options: list[str], shown: str, dashes: str = "--") -> str:
    """A field the section lacks: the fields it has, and for the model section the families
    that do have it (an option of another family than the one chosen)."""
    fields = [o.split(".", 1)[1] for o in options if o.startswith(f"--{section}.")]
    allowed = f"{section} options are"
    if section == "model":
        family = parser.get_default("model.family")
        owners = [f for f in families() if f != family and field in _fields(get_family(f).config)]
        if owners:
            return (f"{shown}: model.family={family!r} has no {field} (model.family {' or '.join(owners)} "
                    f"has); the options of model.family={family!r} are {', '.join(fields)}")
        allowed = f"the options of model.family={family!r} are"
    hint = difflib.get_close_matches(field, fields, n=1)
    did = f" (did you mean {dashes}{section}.{hint[0]}?)" if hint else ""
    return f"{shown}{did}; {allowed} {', '.join(fields)}"


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}
