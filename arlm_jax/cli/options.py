"""Options shared by the subcommands: the config sections, ``--preset``, ``--config``, and the
RunConfig and mesh they build.

Parsing is jsonargparse's: each ``--section.field`` option takes its type from the dataclass
annotation, its help from the field's attribute docstring and its default from the layers
below the command line (dataclass defaults -> ``--preset`` -> ``--config``). The model section
depends on the family, so a first pass over the command line (``first_pass``) finds
``--model.family``, ``--preset`` and ``--config`` before the parser is built for that family's
config class, with that preset's values as its defaults (what ``--help`` then shows too).
"""

from __future__ import annotations

import argparse
import json
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path

import jsonargparse

from arlm_jax.cli.errors import describe
from arlm_jax.config import DataConfig, MeshConfig, RunConfig, TrainConfig, from_dict, to_dict
from arlm_jax.errors import ConfigError
from arlm_jax.models import Family, families, get_family

SECTIONS = {"train": TrainConfig, "data": DataConfig, "mesh": MeshConfig}  # "model": the family's


def new_parser(**kwargs) -> jsonargparse.ArgumentParser:
    """A parser that raises ``ArgumentError`` instead of printing usage and exiting, reads
    attribute docstrings as help, and takes no abbreviated option names."""
    jsonargparse.set_parsing_settings(docstring_parse_attribute_docstrings=True)
    return jsonargparse.ArgumentParser(exit_on_error=False, print_config=None, allow_abbrev=False, **kwargs)


@dataclass(frozen=True)
class Source:
    """What the first pass over a command line found."""

    family: Family
    preset: str
    config: str | None  # the --config path
    file: dict  # the sections of that file ({} without one)
    given: frozenset[str]  # options named on the command line, e.g. "model.vocab_size", "resume"

    @property
    def sections(self) -> dict[str, type]:
        """Config section -> its dataclass, the model section being this family's."""
        return {"model": self.family.config, **SECTIONS}

    @property
    def explicit(self) -> set[str]:
        """``section.field`` names set on the command line or in the config file."""
        in_file = {f"{s}.{k}" for s, v in self.file.items() if isinstance(v, dict) for k in v}
        return set(self.given) | in_file


def first_pass(argv: list[str], config_options: bool = True) -> Source:
    """The family, preset and config file a subcommand's arguments ask for. Without
    ``config_options`` (a subcommand that has none) only the named options are recorded."""
    given = frozenset(a[2:].split("=", 1)[0] for a in argv if a.startswith("--"))
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    for name in ("--preset", "--config", "--model.family", "--init-from"):
        pre.add_argument(name, dest=name[2:])
    try:  # jsonargparse refuses parse_known_args; a mistake here is reported by the real parse
        found = vars(pre.parse_known_args(argv if config_options else [])[0])
    except argparse.ArgumentError:
        found = {}
    path = found.get("config")
    file = read_config_file(path) if path else {}
    holder = f"--config={path!r}"  # what the model section came from, for the error below
    if found.get("init-from"):  # its model and tokenizer, under the config file and the options
        base = init_from_sections(found["init-from"])
        if "family" not in file.get("model", {}):
            holder = f"--init-from={found['init-from']!r}"
        file = {**base, **file, "model": {**base["model"], **file.get("model", {})},
                "data": {**base["data"], **file.get("data", {})}}
    in_file = file.get("model", {})
    name = found.get("model.family") or in_file.get("family") or RunConfig().model.family
    if in_file.get("family", name) != name:
        raise ConfigError(f"--model.family={name!r}, but {holder} holds a model of family "
                          f"{in_file['family']!r}; give one of them")
    family = get_family(name)
    preset = found.get("preset") or file.get("preset") or family.default_preset
    return Source(family, preset, path, file, given)


def init_from_sections(run_dir: str) -> dict:
    """What ``--init-from RUN_DIR`` layers under ``--config`` and the options: the run folder's
    model section, preset and data.tokenizer, from its config.json."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"--init-from={run_dir!r} has no config.json; give a run folder (arlm train's "
                          f"out_dir or arlm convert's --out)")
    saved = read_config_file(str(path))
    if not isinstance(saved.get("model"), dict) or "tokenizer" not in saved.get("data", {}):
        raise ConfigError(f"--init-from={run_dir!r}: its config.json has no model section or data.tokenizer")
    return {"preset": saved.get("preset", "demo"), "model": saved["model"],
            "data": {"tokenizer": saved["data"]["tokenizer"]}}


def read_config_file(path: str) -> dict:
    """The sections of a JSON or TOML config file (by its suffix)."""
    p = Path(path)
    kind = "TOML" if p.suffix == ".toml" else "JSON"
    try:
        text = p.read_text()
        data = tomllib.loads(text) if kind == "TOML" else json.loads(text)
    except OSError as err:
        raise ConfigError(f"--config={path!r} cannot be read ({err.strerror})") from None
    except ValueError as err:
        raise ConfigError(f"--config={path!r} is not valid {kind}: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config={path!r} holds no sections; give model/train/data/mesh tables")
    known = ("preset", "model", *SECTIONS)
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"--config={path!r}: {key} is not a config section; choose from {', '.join(known)}")
        if key != "preset" and not isinstance(value, dict):
            raise ConfigError(f"--config={path!r}: its {key} section is not a table of options")
    return data


def add_config_options(parser: jsonargparse.ArgumentParser, source: Source) -> None:
    """``--preset``, ``--config`` and ``--section.field`` for every field of the four sections,
    with the preset's and the config file's values as defaults."""
    fam = source.family
    parser.add_argument("--preset", default=source.preset, metavar="NAME",
                        help=f"model preset of model.family={fam.name}: {', '.join(fam.presets)}; "
                             f"--model.family NAME picks another family: {', '.join(families())}")
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="JSON or TOML file with model/train/data/mesh sections (e.g. a run's "
                             "config.json); options given here override it")
    parser.add_class_arguments(fam.config, "model", default=to_dict(fam.preset(source.preset)))
    for name, cls in SECTIONS.items():
        parser.add_class_arguments(cls, name)
    if source.file:
        sections = {k: v for k, v in source.file.items() if k != "preset"}
        try:  # type-checked as the command line is
            values = parser.parse_object(sections, defaults=False)
        except jsonargparse.ArgumentError as err:
            raise ConfigError(f"--config={source.config!r}: {describe(str(err), parser, 'file')}") from None
        parser.set_defaults(dict(values.items()))


def add_mesh_options(parser: jsonargparse.ArgumentParser) -> None:
    """``--mesh.*`` alone (eval, generate: without one, everything runs on one device)."""
    parser.add_class_arguments(MeshConfig, "mesh")


def yaml_spelling(argv: list[str], source: Source) -> list[str]:
    """The command line with the values of the config sections' booleans and None-able options
    spelled as jsonargparse reads them (YAML): 1/0 -> true/false, none -> null."""
    hints = {f"--{s}.{n}": h for s, cls in source.sections.items() for n, h in typing.get_type_hints(cls).items()}
    out: list[str] = []
    pending = None  # the type of the option whose value comes next
    for arg in argv:
        name, eq, value = arg.partition("=")
        if pending is not None:
            out.append(_spelled(arg, pending))
            pending = None
        elif name in hints and eq:
            out.append(f"{name}={_spelled(value, hints[name])}")
        else:
            pending = hints.get(arg)
            out.append(arg)
    return out


def _spelled(value: str, hint: typing.Any) -> str:
    kinds = typing.get_args(hint) or (hint,)
    low = value.lower()
    if bool in kinds and low in ("1", "0"):
        return "true" if low == "1" else "false"
    if type(None) in kinds and low == "none":
        return "null"
    return value


def build_run(args: jsonargparse.Namespace, source: Source) -> tuple[RunConfig, set[str]]:
    """The validated RunConfig of parsed arguments, and the ``section.field`` names set
    explicitly (on the command line or in the config file)."""
    data = {"preset": args.preset, **{s: args[s].as_dict() for s in source.sections}}
    return from_dict(data).validate(), source.explicit


def mesh_from_args(args: jsonargparse.Namespace, source: Source):
    """The mesh the ``--mesh.*`` options ask for, or None when none is given (one device)."""
    if not any(name.startswith("mesh.") for name in source.given):
        return None
    from arlm_jax.parallel.mesh import mesh_of
    return mesh_of(MeshConfig(**args.mesh.as_dict()).validate())
