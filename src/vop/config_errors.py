"""Config validation whose errors lead with the fix, filling in the schema's defaults as Snakemake does.

`validate_config(config, schema_path)` replaces snakemake.utils.validate in the Snakefile. A bad config
raises vop.conf.ConfigError whose first line is the key path, what is wrong and the closest valid key or
value, instead of jsonschema's dump of the schema and the instance:

    methods.vop.prefiltr: unknown key; did you mean 'prefilter'?
      allowed here: type, k, encoder, prefilter, radius, tfidf, seed, ivf_min_images, ivf_nprobe, chunk_images
      (in config/config.yaml)

Up to two more problems follow, one line each. The keys "allowed here" are those of every schema that
applies at that place, then-branches included when their `if` holds (a method's keys depend on its
`type`); a key of another branch is named as such ("not allowed here (only with type: vop)"). With the
key an `if` tests absent (a misspelt `type`), JSON Schema applies every branch, whose complaints about
each other's keys and requirements are left out.

Defaults are filled exactly as snakemake.utils.validate(set_default=True) fills them (snakemake 9):
wherever `properties` is evaluated against a mapping, each missing property whose subschema has a
`default` is set to it first. So a missing block with `default: {}` is created and then filled, the
properties of a then-branch are filled when its `if` holds, and a default behind a `$ref` is not filled.
Unlike snakemake, defaults are copies of the schema's values, and on error the config is left unchanged.
"""

from __future__ import annotations

import contextlib
import copy
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import yaml
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource

from vop.conf import ConfigError, key_path, listing, suggest

MAX_PROBLEMS = 3  # the first one and up to two more, then a count

_TYPE_WORDS = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false",
               "array": "a list", "object": "a mapping (key: value)", "null": "null"}
_BOUNDS = (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"))
_UNKNOWN_KEYS = ("additionalProperties", "unevaluatedProperties")


def _with_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if isinstance(subschema, dict) and "default" in subschema:
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


_FillingValidator = _with_defaults(Draft202012Validator)


def _load(path: str | Path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _condition(if_schema) -> str | None:
    """'type: vop' for an `if` of the form {properties: {type: {const: vop}}} (or an enum)."""
    tested = _tested_key(if_schema)
    if tested is None:
        return None
    test = if_schema["properties"][tested]
    if "const" in test:
        return f"{tested}: {test['const']}"
    if "enum" in test:
        return f"{tested}: " + " or ".join(map(str, test["enum"]))
    return None


def _tested_key(if_schema) -> str | None:
    """The one property an `if` of the form {properties: {key: {...}}} tests."""
    if (isinstance(if_schema, dict) and set(if_schema) == {"properties"} and len(if_schema["properties"]) == 1
            and isinstance(next(iter(if_schema["properties"].values())), dict)):
        return next(iter(if_schema["properties"]))
    return None


class _Schema:
    """The schema, its $refs resolved, and which of its parts apply at a place of the config."""

    def __init__(self, schema: dict, registry: Registry, uri: str):
        self.root = schema
        self.resolver = registry.resolver(base_uri=uri)
        self.validator = Draft202012Validator(schema, registry=registry)

    def resolve(self, node):
        for _ in range(20):  # a lone $ref, or one beside other keywords (those are dropped here)
            if not (isinstance(node, dict) and "$ref" in node):
                break
            node = self.resolver.lookup(node["$ref"]).contents
        return node

    def applying(self, node, instance, every_branch: bool, condition: str | None = None
                 ) -> Iterator[tuple[dict, str | None]]:
        """`node` and the subschemas applying with it to `instance`, each with the `if` of its branch.
        `every_branch`: then- and else-branches whether their `if` holds or not."""
        node = self.resolve(node)
        if not isinstance(node, dict):
            return
        yield node, condition
        for keyword in ("allOf", "anyOf", "oneOf"):
            for sub in node.get(keyword, ()):
                yield from self.applying(sub, instance, every_branch, condition)
        if "if" in node:
            holds = self.validator.evolve(schema=node["if"]).is_valid(instance)
            if "then" in node and (holds or every_branch):
                yield from self.applying(node["then"], instance, every_branch, _condition(node["if"]) or condition)
            if "else" in node and (not holds or every_branch):
                yield from self.applying(node["else"], instance, every_branch, condition)

    def names(self, config, path: tuple, every_branch: bool = False) -> dict[str, list[str | None]]:
        """The property names the schema knows at `path` of `config`, each with the conditions it has."""
        instance, current = config, list(self.applying(self.root, config, every_branch))
        for key in path:
            instance = instance[key]
            children = []
            for schema, _ in current:
                if isinstance(key, int):
                    prefix = schema.get("prefixItems", [])
                    children.append(prefix[key] if key < len(prefix) else schema.get("items"))
                elif key in schema.get("properties", {}):
                    children.append(schema["properties"][key])
                else:
                    matched = [sub for pattern, sub in schema.get("patternProperties", {}).items()
                               if re.search(pattern, str(key))]
                    children += matched or [schema.get("additionalProperties")]
            current = [pair for child in children if isinstance(child, dict)
                       for pair in self.applying(child, instance, every_branch)]
        found: dict[str, list[str | None]] = {}
        for schema, condition in current:
            for name in schema.get("properties", {}):
                found.setdefault(name, []).append(condition)
        return found

    def at(self, schema_path) -> object:
        """The schema at an error's absolute schema path (following the $refs it went through)."""
        node = self.root
        for key in schema_path:
            try:
                node = self.resolve(node)[key]
            except (KeyError, IndexError, TypeError):
                return None
        return node

    def describe(self, node) -> str:
        """What a schema accepts, in a few words."""
        node = self.resolve(node)
        if not isinstance(node, dict):
            return "anything" if node is True else "nothing"
        if "const" in node:
            return str(node["const"])
        if "enum" in node:
            return ", ".join(map(str, node["enum"]))
        if "pattern" in node:
            return node.get("description") or f"a string matching {node['pattern']!r}"
        kinds = [node["type"]] if isinstance(node.get("type"), str) else list(node.get("type", []))
        text = " or ".join(_TYPE_WORDS.get(t, t) for t in kinds) or "another form"
        if kinds == ["array"] and isinstance(node.get("items"), dict):
            text = f"a list of: {self.describe(node['items'])}"
        bounds = [f"{sign} {node[k]}" for k, sign in _BOUNDS if k in node]
        return text + (" " + " and ".join(bounds) if bounds else "")


@dataclass
class _Problem:
    path: tuple
    line: str
    rank: int  # 0: a typo with a suggestion, 1: a wrong value, 2: a key of another branch, 3: an unknown
    #            key without suggestion, 4: a missing key, 5: anything else
    context: list[str] = field(default_factory=list)
    suggests: str | None = None  # the key a typo is for (its "missing" error is the same problem)
    missing: str | None = None


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def _json_type(value) -> str:
    for kind, types in (("boolean", bool), ("integer", int), ("number", float), ("string", str),
                        ("array", list), ("object", dict)):
        if isinstance(value, types):
            return kind
    return "null" if value is None else type(value).__name__


def _type_hint(expected: list[str], value) -> str:
    """The edit that turns a wrongly typed YAML value into the expected one, when it is clear."""
    if isinstance(value, str):
        for kind, parse in (("integer", int), ("number", float)):
            if kind in expected:
                try:
                    parse(value)
                    return f"; write {value} without quotes"
                except ValueError:
                    pass
        if "boolean" in expected and value.lower() in ("true", "false"):
            return f"; write {value.lower()} without quotes"
    if "array" in expected and not isinstance(value, (list, dict)):
        return f"; write it as a list: [{value}]"
    if "string" in expected and isinstance(value, (int, float)) and not isinstance(value, bool):
        return "; put it in quotes so that YAML reads it as text (e.g. '0015', not 0015)"
    return ""


class _Explainer:
    def __init__(self, schema: _Schema, config):
        self.schema, self.config = schema, config

    def problems(self, error: ValidationError) -> list[_Problem]:
        path = tuple(error.absolute_path)
        schema_path = list(error.absolute_schema_path)
        if error.validator in _UNKNOWN_KEYS:
            return self._unknown_keys(error, path)
        if self._vacuous(schema_path, path):
            return []  # from a branch that applies only because the key its `if` tests is missing
        is_name = "propertyNames" in schema_path
        if is_name:
            path += (error.instance,)
        where = key_path(path)
        kind = error.validator
        if kind in ("enum", "const"):
            allowed = error.validator_value if kind == "enum" else [error.validator_value]
            return [self._not_allowed(path, error.instance, listing(allowed), allowed, is_name)]
        if kind == "required":
            condition = self._branch_condition(schema_path)
            why = f"required with {condition}" if condition else "this key is required"
            has = [f"  {key_path(path)} has: {listing(error.instance)}"] if error.instance else []
            return [_Problem(path + (key,), f"{key_path(path + (key,))}: missing; {why}", 4, has, missing=key)
                    for key in error.validator_value if key not in error.instance]
        if kind == "type":
            expected = [error.validator_value] if isinstance(error.validator_value, str) else error.validator_value
            value = error.instance
            shown = "" if value is None or isinstance(value, (dict, list)) else f" ({_short(value)})"
            got = _json_type(value)
            return [_Problem(path, f"{where}: expected {' or '.join(_TYPE_WORDS.get(t, t) for t in expected)}, "
                                   f"got {_TYPE_WORDS.get(got, got)}{shown}{_type_hint(expected, value)}", 1)]
        if kind in ("anyOf", "oneOf"):
            return self._alternatives(error, path)
        message = error.message
        if len(message) > 160 or "\n" in message:  # jsonschema quotes the whole instance: say less
            message = f"{_short(error.instance)} fails the schema's {kind!r} rule ({_short(error.validator_value)})"
        if is_name:
            message = message.replace(repr(error.instance), "the name", 1)
        return [_Problem(path, f"{where}: {message}", 5 if kind in ("allOf", "not", "if", "dependentSchemas") else 1)]

    def _vacuous(self, schema_path: list, path: tuple) -> bool:
        """Whether the error comes from within a then-branch whose `if` tests a key that the object the branch
        applies to lacks (a branch's complaint about a value of its own keys included)."""
        if "then" not in schema_path:
            return False
        branch = len(schema_path) - 1 - schema_path[::-1].index("then")
        parent = self.schema.at(schema_path[:branch])
        tested = _tested_key(parent.get("if")) if isinstance(parent, dict) else None
        if tested is None:
            return False
        # each step into a key or an item below the branch is one element of the error's path
        depth = sum(step in ("properties", "patternProperties", "items", "additionalProperties")
                    for step in schema_path[branch + 1:-1])
        target = self.config
        for key in path[:len(path) - depth]:
            target = target[key] if isinstance(target, (dict, list)) else None
        return isinstance(target, dict) and tested not in target

    def _branch_condition(self, schema_path: list) -> str | None:
        if "then" not in schema_path:
            return None
        branch = len(schema_path) - 1 - schema_path[::-1].index("then")
        parent = self.schema.at(schema_path[:branch])
        return _condition(parent.get("if")) if isinstance(parent, dict) else None

    def _not_allowed(self, path, value, allowed_text: str, options, is_name=False) -> _Problem:
        where = key_path(path)
        what = "unknown name" if is_name else f"{_short(value)} is not allowed"
        match = suggest(value, options) if isinstance(value, str) else None
        if match is not None:
            return _Problem(path, f"{where}: {what}; did you mean {match!r}?", 0, [f"  allowed: {allowed_text}"])
        return _Problem(path, f"{where}: {what}; allowed: {allowed_text}", 1)

    def _unknown_keys(self, error: ValidationError, path: tuple) -> list[_Problem]:
        if not isinstance(error.instance, dict):
            return []
        here = self.schema.names(self.config, path)
        everywhere = self.schema.names(self.config, path, every_branch=True)
        allowed = f"allowed here: {listing(here)}" if here else "no keys are allowed here"
        def only(name: str) -> str:  # the branches a name belongs to, when it is not allowed here
            values: dict[str, list[str]] = {}  # "source: a", "source: b" -> {"source": ["a", "b"]}
            for condition in dict.fromkeys(c for c in everywhere.get(name, []) if c):
                key, _, value = condition.partition(": ")
                values.setdefault(key, []).append(value)
            text = " or ".join(f"{key}: {listing(vals, limit=4)}" for key, vals in values.items())
            return f" (only with {text})" if values and name not in here else ""

        problems = []
        for key in error.instance:
            if key in here:  # allowed by another applying branch (a vacuous one's complaint)
                continue
            where = key_path(path + (key,))
            match = suggest(key, here) or suggest(key, everywhere)
            if key in everywhere:
                problems.append(_Problem(path + (key,), f"{where}: not allowed here{only(key)}; {allowed}", 2))
            elif match is not None:
                problems.append(_Problem(path + (key,), f"{where}: unknown key; did you mean {match!r}?{only(match)}",
                                         0, [f"  {allowed}"], suggests=match))
            else:
                problems.append(_Problem(path + (key,), f"{where}: unknown key; {allowed}", 3))
        return problems

    def _alternatives(self, error: ValidationError, path: tuple) -> list[_Problem]:
        """anyOf / oneOf: which keys to give, the branch the value was meant for, or the values allowed."""
        branches = [self.schema.resolve(b) for b in error.validator_value]
        keys = [b["required"][0] for b in branches
                if isinstance(b, dict) and set(b) == {"required"} and len(b["required"]) == 1]
        where = key_path(path)
        if len(keys) == len(branches):
            alternatives = " or ".join(map(repr, keys))
            needs = "give only one of" if not error.context else "needs one of"
            return [_Problem(path, f"{where}: {needs} the keys {alternatives}", 1)]
        if not error.context:  # valid under several oneOf branches
            return [_Problem(path, f"{where}: {_short(error.instance)} fits more than one of: "
                                   + "; ".join(map(self.schema.describe, branches)), 1)]
        by_branch: dict[int, list[ValidationError]] = {}
        for sub in error.context:
            by_branch.setdefault(sub.relative_schema_path[0], []).append(sub)
        # The branch the value was meant for: the only one whose type it has. Explain its errors then.
        fitting = [i for i, subs in by_branch.items()
                   if not any(s.validator == "type" and not s.relative_path for s in subs)]
        if len(fitting) == 1 and not any(s.validator in ("enum", "const") for s in by_branch[fitting[0]]):
            return [p for sub in by_branch[fitting[0]] for p in self.problems(sub)]
        options = [v for b in branches if isinstance(b, dict) for v in ([b["const"]] if "const" in b
                                                                          else b.get("enum", []))]
        return [self._not_allowed(path, error.instance, ", or ".join(map(self.schema.describe, branches)), options)]


def _report(problems: list[_Problem], source: str | None) -> tuple[str, tuple]:
    fixed = {(p.path[:-1], p.suggests) for p in problems if p.suggests}
    problems = [p for p in problems if not (p.missing and (p.path[:-1], p.missing) in fixed)]
    unique: dict[str, _Problem] = {}
    for problem in problems:
        unique.setdefault(problem.line, problem)
    first, *others = sorted(unique.values(), key=lambda p: (p.rank, -len(p.path)))
    lines = [first.line, *first.context[:2]]
    lines += [f"  also: {p.line}" for p in others[: MAX_PROBLEMS - 1]]
    if len(others) > MAX_PROBLEMS - 1:
        lines.append(f"  ... and {len(others) - MAX_PROBLEMS + 1} more problem(s)")
    if source:
        lines.append(f"  (in {source})")
    return "\n".join(lines), first.path


def validate_config(config: dict, schema_path: str | Path, *, source: str | None = None) -> None:
    """Check `config` against the JSON schema (a YAML or JSON file) and fill in its defaults, in place.

    Raises ConfigError (first line: key path, problem, closest valid key or value) and leaves `config`
    as it was. `source` (e.g. "config/config.yaml") is named on the message's last line.
    """
    schema_path = Path(schema_path)
    schema = _load(schema_path)
    uri = schema_path.resolve().as_uri()
    schema["$id"] = uri  # relative $refs resolve against the schema file, as snakemake does

    def retrieve(other: str) -> Resource:  # $refs to other schema files
        return Resource.from_contents(_load(url2pathname(urlparse(other).path)))

    registry = Registry(retrieve=retrieve).with_resource(uri, Resource.from_contents(schema))
    original = copy.deepcopy(config)
    if next(_FillingValidator(schema, registry=registry).iter_errors(config), None) is None:
        return
    if isinstance(config, dict):  # unchanged on error: filled defaults would show in "has: ..." lines
        config.clear()
        config.update(original)
    explainer = _Explainer(_Schema(schema, registry, uri), config)
    problems = [p for e in Draft202012Validator(schema, registry=registry).iter_errors(config)
                for p in explainer.problems(e)]
    # A key of another branch (rank 2) only because its branch's key has a wrong value: that value is the fix.
    wrong = {p.path for p in problems if p.rank in (0, 1)}
    problems = [p for p in problems if not (p.rank == 2 and any(w[:-1] == p.path[:-1] for w in wrong))]
    if not problems:  # every error came from a vacuous branch: say what jsonschema says, briefly
        error = next(Draft202012Validator(schema, registry=registry).iter_errors(config))
        problems = [_Problem(tuple(error.absolute_path), f"{key_path(error.absolute_path)}: {error.message[:160]}", 5)]
    message, path = _report(problems, source)
    raise ConfigError(message, path)


@contextlib.contextmanager
def exit_on_config_error():
    """In the Snakefile: a ConfigError is printed on stderr as it is (its first line names the key and the
    fix) and Snakemake stops with status 1, without the traceback and "WorkflowError in file" lines."""
    try:
        yield
    except ConfigError as error:
        print(f"Config error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
